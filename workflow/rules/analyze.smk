include: "inputs/analyze.smk"


rule domains:
    """Leiden on the expression PCA and spatial domains on neighbour-smoothed PCA (no labels needed)."""
    input:
        "resources/datasets/{dataset}/raw.h5ad",
    output:
        domains="results/{dataset}/analyze/domains.parquet",
        record="results/{dataset}/analyze/domains.json",
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
        "{params.doublets} --out {output.domains:q} --record {output.record:q} > {log:q} 2>&1"


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
