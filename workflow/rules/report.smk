include: "inputs/report.smk"


rule narrative:
    """Tissue-blind prompt from aggregated metrics (checked for leaks); MedGemma's text when a checkpoint is set."""
    input:
        unpack(narrative_inputs),
    output:
        "results/{dataset}/report/narrative.json",
    params:
        entry=dataset_entry,
        plan=narrative_plan_json,
        settings=narrative_settings,
    resources:
        gpu=narrative_gpu,
    log:
        "logs/{dataset}/narrative.log",
    benchmark:
        "benchmarks/{dataset}/narrative.tsv"
    conda:
        "../envs/report.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/narrative.py\" --dataset {wildcards.dataset} --entry {params.entry:q} --qc {input.qc:q} "
        "--preprocessed {input.preprocessed:q} --plan {params.plan:q} --settings {params.settings:q} "
        "--out {output:q} > {log:q} 2>&1"


rule report:
    """The per-dataset self-contained HTML report, from every stage built for the dataset."""
    input:
        unpack(report_inputs),
    output:
        html=report(
            "results/{dataset}/report/index.html",
            caption="../report/report_index.rst",
            category="Report",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "section": "all", "figure": "HTML report"},
        ),
        figures=report(
            directory("results/{dataset}/report/figures"),
            patterns=["{section}/{name}.png"],
            caption="../report/report_figures.rst",
            category="Report",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "section": "{section}", "figure": "{name}"},
        ),
    params:
        plan=report_plan_json,
        settings=report_settings,
        run_config=report_run_config,
        narrative=input_flag("narrative"),
    log:
        "logs/{dataset}/report.log",
    benchmark:
        "benchmarks/{dataset}/report.tsv"
    conda:
        "../envs/report.yaml"
    shell:
        "python \"$TISSUELENS_SCRIPTS/report.py\" --dataset {wildcards.dataset} --qc {input.qc:q} "
        "--preprocessed {input.preprocessed:q} --plan {params.plan:q} --settings {params.settings:q} "
        "--run-config {params.run_config:q} {params.narrative} --out {output.html:q} "
        "--figures {output.figures:q} > {log:q} 2>&1"
