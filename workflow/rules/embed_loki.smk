import copy

from tissuelens.plan import LOKI_TASK_FILES, LOKI_TASKS

# Tahoe-x1's own image (llm-foundry, composer, flash-attn for CUDA 12); the Tahoe rule's `container:`.
# workflow/envs/tahoe.yaml is the conda alternative. workflow/envs/tahoe_cpu.yaml (no flash-attn) is download_model's env for
# Tahoe models (MODEL_ENVS); embed_tahoe keeps a fixed env, since --containerize refuses a conda function on a
# rule outside the DAG; on a CPU, run its script in the tahoe_cpu.yaml env (README, Tahoe-x1).
TAHOE_IMAGE = "docker://ghcr.io/tahoebio/tahoe-x1:1.0.0"


def embed_kind_settings(kind):
    """Input function: the dataset's embed.<kind> settings as a JSON string param (the Loki tasks' own
    settings left out, so that changing them does not re-embed)."""

    def param(wildcards):
        return as_param(settings(wildcards.dataset, "embed").get(kind) or {}, LOKI_TASKS)

    return param


def loki_task_config(dataset, task):
    return settings(dataset, "embed")["loki"][task]


def loki_task_settings(task):
    """Input function: embed.loki.<task> settings as a JSON string param (annotate: its files resolved as
    the analyze stage's marker file)."""

    def param(wildcards):
        values = copy.deepcopy(loki_task_config(wildcards.dataset, task))
        if task == "annotate":
            for key in ("markers", "sentences", "bulk"):
                values[key] = resolve_marker_file(values.get(key))
        return as_param(values)

    return param


def loki_task_targets(dataset):
    """The files of every Loki task on for the dataset, for each of its Loki models."""
    plan = plan_of(dataset)
    return [f"results/{dataset}/loki/{m}/{name}" for m in plan.of_kind("loki") for task in plan.loki_tasks
            for name in LOKI_TASK_FILES[task]]


def loki_markers(wildcards):
    """The annotation's input files: curated sentences (else the marker file) and the bulk table."""
    values = loki_task_config(wildcards.dataset, "annotate")
    files = [resolve_marker_file(values.get("sentences") or values["markers"]), resolve_marker_file(values.get("bulk"))]
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


rule embed_loki:
    """Loki/OmiCLIP (open_clip CoCa): gene-sentence text and H&E patch image embeddings of every spot."""
    input:
        h5ad="results/{dataset}/preprocessed.h5ad",
        model="resources/models/{model}",
    output:
        h5ad="results/{dataset}/embed/{model}/embeddings.h5ad",
        activations=directory("results/{dataset}/embed/{model}/activations"),
        metrics="results/{dataset}/embed/{model}/metrics.json",
    params:
        settings=embed_kind_settings("loki"),
        seed=dataset_seed,
    wildcard_constraints:
        model=kind_model_pattern("loki"),
    threads: 2
    resources:
        gpu=1,  # device: auto takes the GPU when there is one
    log:
        "logs/{dataset}/embed/{model}.log",
    benchmark:
        "benchmarks/{dataset}/embed/{model}.tsv"
    conda:
        "../envs/loki.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/embed_loki.py\" --h5ad {input.h5ad:q} --model-dir {input.model:q} --model {wildcards.model} "
        "--settings {params.settings:q} --seed {params.seed} --out {output.h5ad:q} "
        "--activations {output.activations:q} --metrics {output.metrics:q} > {log:q} 2>&1"


rule loki_annotate:
    """Loki zero-shot annotation: marker-gene sentences per cell type against every spot's image and text embeddings."""
    input:
        embeddings="results/{dataset}/embed/{model}/embeddings.h5ad",
        preprocessed="results/{dataset}/preprocessed.h5ad",
        model="resources/models/{model}",
        markers=loki_markers,
    output:
        table="results/{dataset}/loki/{model}/annotation.parquet",
        summary="results/{dataset}/loki/{model}/annotation.json",
    params:
        settings=loki_task_settings("annotate"),
    wildcard_constraints:
        model=kind_model_pattern("loki"),
    log:
        "logs/{dataset}/loki/{model}/annotate.log",
    benchmark:
        "benchmarks/{dataset}/loki/{model}/annotate.tsv"
    conda:
        "../envs/loki.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/loki_annotate.py\" --embeddings {input.embeddings:q} --preprocessed {input.preprocessed:q} "
        "--model-dir {input.model:q} --settings {params.settings:q} --out {output.table:q} "
        "--summary {output.summary:q} > {log:q} 2>&1"


rule loki_retrieve:
    """Loki retrieval: each spot's image embedding against the transcriptome (text) embeddings, top k."""
    input:
        unpack(loki_retrieve_inputs),
    output:
        table="results/{dataset}/loki/{model}/retrieval.parquet",
        summary="results/{dataset}/loki/{model}/retrieval.json",
    params:
        settings=loki_task_settings("retrieve"),
        reference=loki_retrieve_reference_args,
    wildcard_constraints:
        model=kind_model_pattern("loki"),
    log:
        "logs/{dataset}/loki/{model}/retrieve.log",
    benchmark:
        "benchmarks/{dataset}/loki/{model}/retrieve.tsv"
    conda:
        "../envs/loki.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/loki_retrieve.py\" --embeddings {input.embeddings:q} {params.reference} --settings {params.settings:q} "
        "--out {output.table:q} --summary {output.summary:q} > {log:q} 2>&1"


rule loki_predex:
    """Loki PredEx: spots' expression predicted from their image (from reference slides, or held-out blocks), scored per gene."""
    input:
        unpack(loki_predex_inputs),
    output:
        genes="results/{dataset}/loki/{model}/predex_genes.csv",
        spots="results/{dataset}/loki/{model}/predex_spots.parquet",
        summary="results/{dataset}/loki/{model}/predex.json",
    params:
        settings=loki_task_settings("predex"),
        reference=loki_predex_reference_args,
        seed=dataset_seed,
    wildcard_constraints:
        model=kind_model_pattern("loki"),
    log:
        "logs/{dataset}/loki/{model}/predex.log",
    benchmark:
        "benchmarks/{dataset}/loki/{model}/predex.tsv"
    conda:
        "../envs/loki.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/loki_predex.py\" --embeddings {input.embeddings:q} --preprocessed {input.preprocessed:q} {params.reference} "
        "--settings {params.settings:q} --seed {params.seed} --genes-out {output.genes:q} "
        "--spots-out {output.spots:q} --summary {output.summary:q} > {log:q} 2>&1"


rule loki_decompose:
    """Loki decomposition: Tangram maps a labelled single-cell reference (OmiCLIP text embeddings) onto the spots."""
    input:
        unpack(loki_decompose_inputs),
    output:
        table="results/{dataset}/loki/{model}/decompose.parquet",
        summary="results/{dataset}/loki/{model}/decompose.json",
    params:
        settings=loki_task_settings("decompose"),
        reference=loki_decompose_reference_name,
        seed=dataset_seed,
    wildcard_constraints:
        model=kind_model_pattern("loki"),
    log:
        "logs/{dataset}/loki/{model}/decompose.log",
    benchmark:
        "benchmarks/{dataset}/loki/{model}/decompose.tsv"
    conda:
        "../envs/loki.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/loki_decompose.py\" --embeddings {input.embeddings:q} --reference {input.reference:q} "
        "--reference-name {params.reference:q} --settings {params.settings:q} --seed {params.seed} "
        "--out {output.table:q} --summary {output.summary:q} > {log:q} 2>&1"


rule embed_tahoe:
    """Tahoe-x1 cell embeddings and per-layer token activations, in tahoe-x1's own stack (GPU; workflow/envs/tahoe_cpu.yaml runs it on a CPU)."""
    input:
        h5ad="results/{dataset}/preprocessed.h5ad",
        model="resources/models/{model}",
    output:
        h5ad="results/{dataset}/embed/{model}/embeddings.h5ad",
        activations=directory("results/{dataset}/embed/{model}/activations"),
        metrics="results/{dataset}/embed/{model}/metrics.json",
    params:
        settings=embed_kind_settings("tahoe"),
        seed=dataset_seed,
    wildcard_constraints:
        model=kind_model_pattern("tahoe"),
    threads: 4
    resources:
        gpu=1,
        mem_mb=32000,
        runtime=120,
    log:
        "logs/{dataset}/embed/{model}.log",
    benchmark:
        "benchmarks/{dataset}/embed/{model}.tsv"
    container:
        TAHOE_IMAGE
    conda:
        "../envs/tahoe.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/embed_tahoe.py\" --h5ad {input.h5ad:q} --model-dir {input.model:q} --model {wildcards.model} "
        "--settings {params.settings:q} --seed {params.seed} --out {output.h5ad:q} "
        "--activations {output.activations:q} --metrics {output.metrics:q} > {log:q} 2>&1"
