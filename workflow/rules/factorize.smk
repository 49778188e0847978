include: "inputs/factorize.smk"


wildcard_constraints:
    variant="|".join(VARIANTS),


rule factorize:
    """Train one PNMF-GP variant (checkpoints beside the model directory; resumes after interruption)."""
    input:
        "results/{dataset}/preprocessed.h5ad",
    output:
        model=directory("results/{dataset}/factorize/{variant}/model"),
        elbo="results/{dataset}/factorize/{variant}/elbo.csv",
    params:
        settings=factorize_settings("train"),
        seed=dataset_seed,
    threads: 4
    resources:
        gpu=factorize_gpu,
    log:
        "logs/{dataset}/factorize/{variant}.log",
    benchmark:
        "benchmarks/{dataset}/factorize/{variant}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/factorize.py\" --h5ad {input:q} --variant {wildcards.variant} --settings {params.settings:q} "
        "--seed {params.seed} --threads {threads} --model {output.model:q} --elbo {output.elbo:q} > {log:q} 2>&1"


rule analyze_factors:
    """Factors, scales, loadings in Moran's I order; deviance, enrichment, recovery and figures of one variant."""
    input:
        h5ad="results/{dataset}/preprocessed.h5ad",
        model="results/{dataset}/factorize/{variant}/model",
        elbo="results/{dataset}/factorize/{variant}/elbo.csv",
    output:
        factors="results/{dataset}/factorize/{variant}/factors.npy",
        scales="results/{dataset}/factorize/{variant}/scales.npy",
        loadings="results/{dataset}/factorize/{variant}/loadings.npy",
        metrics="results/{dataset}/factorize/{variant}/metrics.json",
        enrichment="results/{dataset}/factorize/{variant}/gene_enrichment.json",
        moran="results/{dataset}/factorize/{variant}/moran_i.csv",
        inducing="results/{dataset}/factorize/{variant}/inducing_points.csv",
        group_loadings="results/{dataset}/factorize/{variant}/group_loadings.npz",
        groupwise="results/{dataset}/factorize/{variant}/groupwise_factors.npz",
        figures=report(
            directory("results/{dataset}/factorize/{variant}/figures"),
            patterns=["{name}.png"],
            category="Spatial factors",
            subcategory="{dataset}: {variant}",
        ),
    params:
        settings=factorize_settings("analysis"),
        seed=dataset_seed,
        outdir=subpath(output.factors, parent=True),
    threads: 2
    log:
        "logs/{dataset}/analyze_factors/{variant}.log",
    benchmark:
        "benchmarks/{dataset}/analyze_factors/{variant}.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/analyze_factors.py\" --h5ad {input.h5ad:q} --variant {wildcards.variant} --settings {params.settings:q} "
        "--seed {params.seed} --threads {threads} --model {input.model:q} --elbo {input.elbo:q} "
        "--outdir {params.outdir:q} > {log:q} 2>&1"


rule compare_factorizations:
    """One row per variant of a dataset: deviance, reconstruction, Moran's I, recovery, time."""
    input:
        factorize_metrics,
    output:
        "results/{dataset}/factorize/comparison.csv",
    log:
        "logs/{dataset}/compare_factorizations.log",
    benchmark:
        "benchmarks/{dataset}/compare_factorizations.tsv"
    conda:
        "../envs/torch.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/compare_factorizations.py\" --metrics {input:q} --out {output:q} > {log:q} 2>&1"
