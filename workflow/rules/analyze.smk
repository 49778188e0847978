def domain_settings(wildcards):
    return as_param(settings(wildcards.dataset, "analyze")["domains"])


def analyze_settings(wildcards):
    """The analyze job's settings: everything but the domain settings and the group source (other rules')."""
    return as_param(settings(wildcards.dataset, "analyze"), ("domains", "group_source"))


def group_source_arg(wildcards):
    return plan_of(wildcards.dataset).group_source or ""


def analyze_markers_file(wildcards):
    """The marker file (resolve_marker_file) when annotation is on."""
    path = resolve_marker_file(settings(wildcards.dataset, "analyze")["markers"].get("path"))
    return [path] if path else []


def agreement_factors(dataset):
    """{variant: factors.npy} of the dataset's PNMF-GP variants (empty when factorize is off)."""
    return {v: f"results/{dataset}/factorize/{v}/factors.npy" for v in plan_of(dataset).variants}


def agreement_embeddings(dataset):
    return {m: f"results/{dataset}/embed/{m}/embeddings.h5ad" for m in plan_of(dataset).models}


def agreement_inputs(wildcards):
    dataset = wildcards.dataset
    inputs = {"h5ad": f"results/{dataset}/preprocessed.h5ad", "domains": domains_path(dataset),
              "factors": list(agreement_factors(dataset).values()),
              "embeddings": list(agreement_embeddings(dataset).values())}
    if inputs["factors"]:
        inputs["comparison"] = f"results/{dataset}/factorize/comparison.csv"
    return inputs


def agreement_args(wildcards, input):
    """--comparison/--factors/--embeddings arguments, each left out when its stage is off."""
    factors, embeddings = agreement_factors(wildcards.dataset), agreement_embeddings(wildcards.dataset)
    args = [input_flag("comparison")(wildcards, input),
            flag("factors", *(f"{v}={path}" for v, path in factors.items())),
            flag("embeddings", *(f"{m}={path}" for m, path in embeddings.items()))]
    return " ".join(a for a in args if a)


rule domains:
    """Leiden on the expression PCA and spatial domains on neighbour-smoothed PCA (no labels needed)."""
    input:
        "resources/datasets/{dataset}/raw.h5ad",
    output:
        "results/{dataset}/analyze/domains.parquet",
    params:
        entry=dataset_entry,
        preprocess=settings_of("preprocess"),
        settings=domain_settings,
        seed=dataset_seed,
        doublets=doublet_rate_arg,
    log:
        "logs/{dataset}/analyze/domains.log",
    benchmark:
        "benchmarks/{dataset}/analyze/domains.tsv"
    conda:
        "../envs/core.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/domains.py\" --raw {input:q} --entry {params.entry:q} "
        "--preprocess-settings {params.preprocess:q} --settings {params.settings:q} --seed {params.seed} "
        "{params.doublets} --out {output:q} > {log:q} 2>&1"


rule analyze:
    """Marker annotation (decoupler), doublets (single-cell data), spatial statistics (squidpy), summary."""
    input:
        h5ad="results/{dataset}/preprocessed.h5ad",
        domains="results/{dataset}/analyze/domains.parquet",
        markers=analyze_markers_file,
    output:
        annotation="results/{dataset}/analyze/annotation.parquet",
        doublets="results/{dataset}/analyze/doublets.parquet",
        majority="results/{dataset}/analyze/domain_types.csv",
        net="results/{dataset}/analyze/markers_used.csv",
        nhood="results/{dataset}/analyze/nhood_enrichment.csv",
        cooccurrence="results/{dataset}/analyze/co_occurrence.csv",
        svg="results/{dataset}/analyze/spatially_variable_genes.csv",
        summary="results/{dataset}/analyze/summary.json",
    params:
        entry=dataset_entry,
        settings=analyze_settings,
        source=group_source_arg,
        markers=input_flag("markers"),
        seed=dataset_seed,
        outdir=subpath(output.summary, parent=True),
    log:
        "logs/{dataset}/analyze/analyze.log",
    benchmark:
        "benchmarks/{dataset}/analyze/analyze.tsv"
    conda:
        "../envs/core.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/analyze.py\" --h5ad {input.h5ad:q} --domains {input.domains:q} --entry {params.entry:q} "
        "--settings {params.settings:q} {params.markers} --group-source '{params.source}' --seed {params.seed} "
        "--outdir {params.outdir:q} > {log:q} 2>&1"


rule agreement:
    """ARI / NMI between domains, labels, the best PNMF-GP variant's dominant factor and embedding Leiden."""
    input:
        unpack(agreement_inputs),
    output:
        "results/{dataset}/analyze/agreement.csv",
    params:
        settings=domain_settings,
        source=group_source_arg,
        args=agreement_args,
        seed=dataset_seed,
    log:
        "logs/{dataset}/analyze/agreement.log",
    benchmark:
        "benchmarks/{dataset}/analyze/agreement.tsv"
    conda:
        "../envs/core.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/agreement.py\" --h5ad {input.h5ad:q} --domains {input.domains:q} {params.args} "
        "--settings {params.settings:q} --group-source '{params.source}' --seed {params.seed} "
        "--out {output:q} > {log:q} 2>&1"
