ENVS = WORKFLOW_DIR / "envs"
# download_model's env per kind where it is not workflow/envs/<kind>.yaml: fetching or building a Tahoe model
# needs no flash-attn, so it uses the Tahoe stack that builds anywhere
MODEL_ENVS = {"tahoe": "tahoe_cpu.yaml"}
# keys of embed settings that only select jobs or belong to other kinds' rules (kept out of params)
EMBED_SELECTION_KEYS = ("models", "loki", "tahoe")


def model_config(wildcards):
    """The model's entry under models:, or an error naming the defined models."""
    if wildcards.model not in MODELS:
        raise WorkflowError(f"config: model '{wildcards.model}' is not defined under models: "
                            f"(defined: {', '.join(sorted(MODELS)) or 'none'})")
    return config["models"][wildcards.model]


def model_entry(wildcards):
    return as_param(model_config(wildcards))


def model_inputs(wildcards):
    """Files a model build reads: a random model's gene source (a dataset's preprocessed.h5ad, or a genes file)."""
    entry = model_config(wildcards)
    if entry["source"] != "random":
        return {}
    random = entry.get("random") or {}
    dataset = random.get("genes_from_dataset")
    if dataset is not None:
        if dataset not in DATASETS:
            raise WorkflowError(f"models.{wildcards.model}.random.genes_from_dataset: no dataset named '{dataset}'")
        return {"genes_h5ad": f"results/{dataset}/preprocessed.h5ad"}
    return {"genes_file": random["genes_file"]} if random.get("genes_file") else {}


def model_env(wildcards):
    """The conda env of the model's kind (workflow/envs/<kind>.yaml), absolute so it resolves from any rule file."""
    kind = model_config(wildcards)["kind"]
    env = ENVS / MODEL_ENVS.get(kind, f"{kind}.yaml")
    return str(env if env.exists() else ENVS / "geneformer.yaml")


def embed_settings(part):
    """Input function: the embed settings one Geneformer step reads (embed, perturb or metrics)."""
    drop = EMBED_SELECTION_KEYS + ("metrics",) + (("perturb",) if part == "embed" else ())

    def param(wildcards):
        values = settings(wildcards.dataset, "embed")
        return as_param({"metrics": values["metrics"]}) if part == "metrics" else as_param(values, drop)

    return param


def embed_targets(dataset):
    """Embeddings of the dataset's Loki and Tahoe models; embeddings, activations, metrics (and perturbation
    tables when asked for) of its Geneformer models."""
    plan = plan_of(dataset)
    base = f"results/{dataset}/embed"
    targets = [f"{base}/{m}/embeddings.h5ad" for kind in ("loki", "tahoe") for m in plan.of_kind(kind)]
    for m in plan.of_kind("geneformer"):
        targets += [f"{base}/{m}/embeddings.h5ad", f"{base}/{m}/embedding_metrics.json", f"{base}/{m}/activations"]
        if plan.perturb:
            targets.append(f"{base}/{m}/perturbation.tsv")
    return targets


rule download_model:
    """Fetch (huggingface_hub / local) or build (random, untrained) a checkpoint in the model's own layout."""
    input:
        unpack(model_inputs),
    output:
        directory("resources/models/{model}"),
    params:
        entry=model_entry,
        genes=input_flag("genes-h5ad"),
    wildcard_constraints:
        model="|".join(re.escape(m) for m in MODELS) or "(?!x)x",
    log:
        "logs/models/{model}.log",
    benchmark:
        "benchmarks/models/{model}.tsv"
    conda:
        model_env
    shell:
        "python \"$TISSUELENS_SCRIPTS/download_model.py\" --model {wildcards.model} --entry {params.entry:q} {params.genes} "
        "--out {output:q} > {log:q} 2>&1"


rule embed_geneformer:
    """Geneformer cell embeddings (input order), token activations for the SAE stage, run consistency."""
    input:
        h5ad="results/{dataset}/preprocessed.h5ad",
        model="resources/models/{model}",
    output:
        h5ad="results/{dataset}/embed/{model}/embeddings.h5ad",
        activations=directory("results/{dataset}/embed/{model}/activations"),
    params:
        settings=embed_settings("embed"),
        seed=dataset_seed,
    wildcard_constraints:
        model=kind_model_pattern("geneformer"),
    threads: 4
    resources:
        gpu=1,  # device: auto takes the GPU when there is one
    log:
        "logs/{dataset}/embed/{model}.log",
    benchmark:
        "benchmarks/{dataset}/embed/{model}.tsv"
    conda:
        "../envs/geneformer.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/embed_geneformer.py\" --h5ad {input.h5ad:q} --checkpoint {input.model:q} --model {wildcards.model} "
        "--settings {params.settings:q} --seed {params.seed} --threads {threads} --out {output.h5ad:q} "
        "--activations {output.activations:q} > {log:q} 2>&1"


rule embedding_metrics:
    """Embedding quality (kNN accuracy, silhouette, Leiden ARI/NMI, spatial coherence) for any model kind."""
    input:
        "results/{dataset}/embed/{model}/embeddings.h5ad",
    output:
        "results/{dataset}/embed/{model}/embedding_metrics.json",
    params:
        settings=embed_settings("metrics"),
        seed=dataset_seed,
    log:
        "logs/{dataset}/embed/{model}_metrics.log",
    benchmark:
        "benchmarks/{dataset}/embed/{model}_metrics.tsv"
    conda:
        "../envs/geneformer.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/embedding_metrics.py\" --embeddings {input:q} --model {wildcards.model} --settings {params.settings:q} "
        "--seed {params.seed} --out {output:q} > {log:q} 2>&1"


rule perturb_geneformer:
    """In-silico perturbation of configured gene sets (InSilicoPerturber); per-cell, per-set and affected-gene tables."""
    input:
        h5ad="results/{dataset}/preprocessed.h5ad",
        model="resources/models/{model}",
    output:
        tsv="results/{dataset}/embed/{model}/perturbation.tsv",
        cells="results/{dataset}/embed/{model}/perturbation_cells.parquet",
        genes="results/{dataset}/embed/{model}/perturbation_genes.parquet",
    params:
        settings=embed_settings("perturb"),
        seed=dataset_seed,
    wildcard_constraints:
        model=kind_model_pattern("geneformer"),
    threads: 4
    resources:
        gpu=1,  # device: auto takes the GPU when there is one
    log:
        "logs/{dataset}/embed/{model}_perturb.log",
    benchmark:
        "benchmarks/{dataset}/embed/{model}_perturb.tsv"
    conda:
        "../envs/geneformer.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/perturb_geneformer.py\" --h5ad {input.h5ad:q} --checkpoint {input.model:q} "
        "--model {wildcards.model} --settings {params.settings:q} --seed {params.seed} --threads {threads} "
        "--out {output.tsv:q} --cells {output.cells:q} --genes {output.genes:q} > {log:q} 2>&1"
