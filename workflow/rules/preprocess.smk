def domains_path(dataset):
    return f"results/{dataset}/analyze/domains.parquet"


def preprocess_groups(wildcards):
    """domains.parquet when the dataset's groups come from its domains (no group_key), else nothing."""
    return [domains_path(wildcards.dataset)] if plan_of(wildcards.dataset).group_source else []


def preprocess_groups_arg(wildcards, input):
    source = plan_of(wildcards.dataset).group_source
    return f"{flag('groups', *input.groups)} {flag('group-column', source)}" if source else ""


def removes_doublets(dataset):
    """preprocess.remove_doublets on a single-cell dataset (spatial data keeps every spot)."""
    on = settings(dataset, "preprocess")["remove_doublets"]
    return bool(on) and not config["datasets"][dataset].get("spatial", False)


def doublet_rate_arg(wildcards):
    """--doublet-rate of the jobs that preprocess ('' unless they remove doublets: the rate reruns nothing else)."""
    rate = settings(wildcards.dataset, "analyze")["doublets"]["expected_rate"]
    return flag("doublet-rate", rate if removes_doublets(wildcards.dataset) else None)


def preprocess_doublets_arg(wildcards):
    """--doublet-rate and --seed of preprocess ('' unless it removes doublets: the seed reruns nothing else)."""
    rate = doublet_rate_arg(wildcards)
    return f"{rate} {flag('seed', dataset_seed(wildcards))}" if rate else ""


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
