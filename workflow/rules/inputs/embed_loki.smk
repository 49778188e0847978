# Input functions and params of the rules in ../embed_loki.smk, which includes this file (snakemake --lint wants
# functions and rules in separate files).

from tissuelens.plan import LOKI_TASK_FILES


def loki_task_config(dataset, task):
    return settings(dataset, "embed")["loki"][task]


def loki_task_settings(task):
    """Input function: embed.loki.<task> settings as a JSON string param (annotate: its files as written, found by
    the job like the analyze stage's marker file: marker_input)."""

    def param(wildcards):
        return as_param(loki_task_config(wildcards.dataset, task))

    return param


def loki_task_targets(dataset):
    """The files of every Loki task on for the dataset, for each of its Loki models."""
    plan = plan_of(dataset)
    return [f"results/{dataset}/loki/{m}/{name}" for m in plan.of_kind("loki") for task in plan.loki_tasks
            for name in LOKI_TASK_FILES[task]]


def loki_markers(wildcards):
    """The annotation's input files: curated sentences (else the marker file) and the bulk table."""
    values = loki_task_config(wildcards.dataset, "annotate")
    files = [marker_input(values.get("sentences") or values["markers"]), marker_input(values.get("bulk"))]
    return [f for f in files if f]


def loki_reference_embeddings(wildcards, task):
    """{reference dataset: its embeddings by the same model} of a Loki task (tissuelens.plan checked the names)."""
    return {name: f"results/{name}/embed/{wildcards.model}/embeddings.h5ad"
            for name in plan_of(wildcards.dataset).references.get(task, [])}


def loki_embeddings(wildcards):
    return f"results/{wildcards.dataset}/embed/{wildcards.model}/embeddings.h5ad"


def loki_retrieve_inputs(wildcards):
    inputs = {"embeddings": loki_embeddings(wildcards)}
    for path in loki_reference_embeddings(wildcards, "retrieve").values():
        inputs["reference"] = path
    return inputs


def loki_retrieve_reference_args(wildcards, input):
    """--reference and --reference-name of the retrieval ('' within the slide)."""
    names = plan_of(wildcards.dataset).references.get("retrieve")
    return f"{flag('reference', input.reference)} {flag('reference-name', names[0])}" if names else ""


def loki_predex_inputs(wildcards):
    inputs = {"embeddings": loki_embeddings(wildcards), "preprocessed": f"results/{wildcards.dataset}/preprocessed.h5ad"}
    for i, (name, path) in enumerate(loki_reference_embeddings(wildcards, "predex").items()):
        inputs[f"reference{i}_embeddings"] = path
        inputs[f"reference{i}_preprocessed"] = f"results/{name}/preprocessed.h5ad"
    return inputs


def loki_predex_reference_args(wildcards):
    """One --reference NAME EMBEDDINGS PREPROCESSED per training slide ('' within the slide)."""
    return " ".join(flag("reference", name, path, f"results/{name}/preprocessed.h5ad")
                    for name, path in loki_reference_embeddings(wildcards, "predex").items())


def loki_decompose_inputs(wildcards):
    (path,) = loki_reference_embeddings(wildcards, "decompose").values()
    return {"embeddings": loki_embeddings(wildcards), "reference": path}


def loki_decompose_reference_name(wildcards):
    (name,) = plan_of(wildcards.dataset).references["decompose"]
    return name
