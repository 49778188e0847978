include: "inputs/download.smk"


rule download:
    """Fetch or synthesise a dataset into the common AnnData contract (integer counts, coordinates)."""
    input:
        download_inputs,
    output:
        "resources/datasets/{dataset}/raw.h5ad",
    params:
        entry=dataset_entry,
        seed=dataset_seed,
    log:
        "logs/{dataset}/download.log",
    benchmark:
        "benchmarks/{dataset}/download.tsv"
    conda:
        "../envs/core.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/download.py\" --dataset {wildcards.dataset} --entry {params.entry:q} "
        "--seed {params.seed} --out {output:q} > {log:q} 2>&1"
