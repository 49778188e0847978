def download_inputs(wildcards):
    """Local files a download reads, so that editing them reruns it."""
    entry = config["datasets"][wildcards.dataset]
    files = []
    if entry["source"] == "local" and Path(entry["path"]).is_file():
        files.append(entry["path"])
    if "labels" in entry:
        files.append(entry["labels"]["path"])
    return files


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
