include: "inputs/preprocess.smk"


rule preprocess:
    """QC filters, group clean-up, highly variable genes and log-normalisation."""
    input:
        raw="resources/datasets/{dataset}/raw.h5ad",
        groups=preprocess_groups,
    output:
        h5ad="results/{dataset}/preprocessed.h5ad",
        qc="results/{dataset}/qc.json",
    params:
        entry=dataset_entry,
        settings=settings_of("preprocess"),
        groups=preprocess_groups_arg,
        doublets=preprocess_doublets_arg,
    log:
        "logs/{dataset}/preprocess.log",
    benchmark:
        "benchmarks/{dataset}/preprocess.tsv"
    conda:
        "../envs/core.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/preprocess.py\" --raw {input.raw:q} --entry {params.entry:q} "
        "--settings {params.settings:q} {params.groups} {params.doublets} --out {output.h5ad:q} --qc {output.qc:q} > {log:q} 2>&1"
