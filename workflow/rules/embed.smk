include: "inputs/embed.smk"


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
