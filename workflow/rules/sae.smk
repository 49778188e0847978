include: "inputs/sae.smk"


rule train_sae:
    """Sparse autoencoder (SAELens 6; TopK by default) on one layer of a model's exported token activations."""
    input:
        "results/{dataset}/embed/{model}/activations",
    output:
        sae=directory("results/{dataset}/sae/{model}/sae"),
        metrics="results/{dataset}/sae/{model}/metrics.json",
        history="results/{dataset}/sae/{model}/training_log.tsv",
        curve=report(
            "results/{dataset}/sae/{model}/loss_curve.png",
            caption="../report/sae_loss.rst",
            category="SAE features",
            subcategory="{dataset}",
            labels={"model": "{model}", "figure": "training"},
        ),
    params:
        settings=sae_settings("train"),
        seed=dataset_seed,
    wildcard_constraints:
        model="[A-Za-z0-9][A-Za-z0-9_.-]*",
    threads: 4
    resources:
        gpu=1,  # device: auto takes the GPU when there is one
    log:
        "logs/{dataset}/sae/{model}/train.log",
    benchmark:
        "benchmarks/{dataset}/sae/{model}/train.tsv"
    conda:
        "../envs/sae.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/train_sae.py\" --activations {input:q} --settings {params.settings:q} --seed {params.seed} "
        "--threads {threads} --out-sae {output.sae:q} --metrics {output.metrics:q} "
        "--history {output.history:q} --loss-curve {output.curve:q} "
        "--checkpoints results/{wildcards.dataset}/sae/{wildcards.model}/checkpoints > {log:q} 2>&1"


rule analyze_sae:
    """SAE features tied to genes, cells, groups, tissue space and PNMF-GP factors; the feature dashboard."""
    input:
        unpack(sae_analysis_inputs),
    output:
        features="results/{dataset}/sae/{model}/features.parquet",
        genes="results/{dataset}/sae/{model}/feature_genes.parquet",
        groups="results/{dataset}/sae/{model}/feature_groups.parquet",
        factors="results/{dataset}/sae/{model}/feature_factors.parquet",
        cells="results/{dataset}/sae/{model}/cell_activations.npz",
        dashboard=report(
            "results/{dataset}/sae/{model}/dashboard.html",
            caption="../report/sae_dashboard.rst",
            category="SAE features",
            subcategory="{dataset}",
            labels={"model": "{model}", "figure": "dashboard"},
        ),
    params:
        settings=sae_settings("analyze"),
        factors=input_flag("factors"),
    wildcard_constraints:
        model="[A-Za-z0-9][A-Za-z0-9_.-]*",
    threads: 2
    resources:
        gpu=1,  # device: auto takes the GPU when there is one
    log:
        "logs/{dataset}/sae/{model}/analyze.log",
    benchmark:
        "benchmarks/{dataset}/sae/{model}/analyze.tsv"
    conda:
        "../envs/sae.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/analyze_sae.py\" --sae {input.sae:q} --activations {input.activations:q} "
        "--preprocessed {input.preprocessed:q} --metrics {input.metrics:q} --loss-curve {input.curve:q} "
        "{params.factors} --settings {params.settings:q} --threads {threads} "
        "--title 'SAE features: {wildcards.dataset} / {wildcards.model}' "
        "--out-features {output.features:q} --out-genes {output.genes:q} --out-groups {output.groups:q} "
        "--out-factors {output.factors:q} --out-dashboard {output.dashboard:q} "
        "--out-cell-activations {output.cells:q} > {log:q} 2>&1"
