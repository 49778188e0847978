include: "inputs/embed_loki.smk"


rule embed_loki:
    """Loki/OmiCLIP (open_clip CoCa): gene-sentence text and H&E patch image embeddings of every spot."""
    input:
        h5ad="results/{dataset}/preprocessed.h5ad",
        model="resources/models/{model}",
    output:
        h5ad="results/{dataset}/embed/{model}/embeddings.h5ad",
        activations=directory("results/{dataset}/embed/{model}/activations"),
        metrics="results/{dataset}/embed/{model}/metrics.json",
    params:
        settings=embed_kind_settings("loki"),
        seed=dataset_seed,
    wildcard_constraints:
        model=kind_model_pattern("loki"),
    threads: 2
    resources:
        gpu=1,  # device: auto takes the GPU when there is one
    log:
        "logs/{dataset}/embed/{model}.log",
    benchmark:
        "benchmarks/{dataset}/embed/{model}.tsv"
    conda:
        "../envs/loki.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/embed_loki.py\" --h5ad {input.h5ad:q} --model-dir {input.model:q} --model {wildcards.model} "
        "--settings {params.settings:q} --seed {params.seed} --out {output.h5ad:q} "
        "--activations {output.activations:q} --metrics {output.metrics:q} > {log:q} 2>&1"


rule loki_annotate:
    """Loki zero-shot annotation: marker-gene sentences per cell type against every spot's image and text embeddings."""
    input:
        embeddings="results/{dataset}/embed/{model}/embeddings.h5ad",
        preprocessed="results/{dataset}/preprocessed.h5ad",
        model="resources/models/{model}",
        markers=loki_markers,
    output:
        table="results/{dataset}/loki/{model}/annotation.parquet",
        summary="results/{dataset}/loki/{model}/annotation.json",
    params:
        settings=loki_task_settings("annotate"),
    wildcard_constraints:
        model=kind_model_pattern("loki"),
    log:
        "logs/{dataset}/loki/{model}/annotate.log",
    benchmark:
        "benchmarks/{dataset}/loki/{model}/annotate.tsv"
    conda:
        "../envs/loki.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/loki_annotate.py\" --embeddings {input.embeddings:q} --preprocessed {input.preprocessed:q} "
        "--model-dir {input.model:q} --settings {params.settings:q} --out {output.table:q} "
        "--summary {output.summary:q} > {log:q} 2>&1"


rule loki_retrieve:
    """Loki retrieval: each spot's image embedding against the transcriptome (text) embeddings, top k."""
    input:
        unpack(loki_retrieve_inputs),
    output:
        table="results/{dataset}/loki/{model}/retrieval.parquet",
        summary="results/{dataset}/loki/{model}/retrieval.json",
    params:
        settings=loki_task_settings("retrieve"),
        reference=loki_retrieve_reference_args,
    wildcard_constraints:
        model=kind_model_pattern("loki"),
    log:
        "logs/{dataset}/loki/{model}/retrieve.log",
    benchmark:
        "benchmarks/{dataset}/loki/{model}/retrieve.tsv"
    conda:
        "../envs/loki.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/loki_retrieve.py\" --embeddings {input.embeddings:q} {params.reference} --settings {params.settings:q} "
        "--out {output.table:q} --summary {output.summary:q} > {log:q} 2>&1"


rule loki_predex:
    """Loki PredEx: spots' expression predicted from their image (from reference slides, or held-out blocks), scored per gene."""
    input:
        unpack(loki_predex_inputs),
    output:
        genes="results/{dataset}/loki/{model}/predex_genes.csv",
        spots="results/{dataset}/loki/{model}/predex_spots.parquet",
        summary="results/{dataset}/loki/{model}/predex.json",
    params:
        settings=loki_task_settings("predex"),
        reference=loki_predex_reference_args,
        seed=dataset_seed,
    wildcard_constraints:
        model=kind_model_pattern("loki"),
    log:
        "logs/{dataset}/loki/{model}/predex.log",
    benchmark:
        "benchmarks/{dataset}/loki/{model}/predex.tsv"
    conda:
        "../envs/loki.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/loki_predex.py\" --embeddings {input.embeddings:q} --preprocessed {input.preprocessed:q} {params.reference} "
        "--settings {params.settings:q} --seed {params.seed} --genes-out {output.genes:q} "
        "--spots-out {output.spots:q} --summary {output.summary:q} > {log:q} 2>&1"


rule loki_decompose:
    """Loki decomposition: Tangram maps a labelled single-cell reference (OmiCLIP text embeddings) onto the spots."""
    input:
        unpack(loki_decompose_inputs),
    output:
        table="results/{dataset}/loki/{model}/decompose.parquet",
        summary="results/{dataset}/loki/{model}/decompose.json",
    params:
        settings=loki_task_settings("decompose"),
        reference=loki_decompose_reference_name,
        seed=dataset_seed,
    wildcard_constraints:
        model=kind_model_pattern("loki"),
    log:
        "logs/{dataset}/loki/{model}/decompose.log",
    benchmark:
        "benchmarks/{dataset}/loki/{model}/decompose.tsv"
    conda:
        "../envs/loki.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/loki_decompose.py\" --embeddings {input.embeddings:q} --reference {input.reference:q} "
        "--reference-name {params.reference:q} --settings {params.settings:q} --seed {params.seed} "
        "--out {output.table:q} --summary {output.summary:q} > {log:q} 2>&1"
