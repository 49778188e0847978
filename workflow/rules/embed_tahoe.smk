include: "inputs/embed_tahoe.smk"


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
