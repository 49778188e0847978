from tissuelens.report.stages import plan_files, stage_plan


def producible(path):
    """True when some rule of this workflow writes `path` (a stage whose rules are not included is absent)."""
    return any(rule.is_producer(path) for rule in workflow.rules)


@functools.lru_cache(maxsize=None)
def report_plan(dataset):
    """Per stage: status (built, disabled, absent) and the files the report reads (tissuelens.report.stages)."""
    return stage_plan(config, dataset, producible, plan_of(dataset))


def report_plan_json(wildcards):
    return as_param(report_plan(wildcards.dataset))


def narrative_config(dataset):
    return settings(dataset, "report")["narrative"]


def narrative_settings(wildcards):
    return as_param(narrative_config(wildcards.dataset))


def narrative_gpu(wildcards):
    """The narrative holds a GPU only when it runs a model on one."""
    values = narrative_config(wildcards.dataset)
    return int(bool(values.get("checkpoint")) and values.get("device", "auto") != "cpu")


def report_settings(wildcards):
    return as_param(settings(wildcards.dataset, "report"), ("narrative",))


def report_run_config(wildcards):
    """The dataset's effective config (entry, seed, every step's settings) for the provenance section."""
    dataset = wildcards.dataset
    return json.dumps({
        "dataset": dataset,
        "seed": dataset_seed(wildcards),
        "entry": {k: v for k, v in config["datasets"][dataset].items() if k not in STEPS},
        "steps": {step: settings(dataset, step) for step in STEPS},
    }, sort_keys=True)


def narrative_inputs(wildcards):
    """The narrative reads QC, the preprocessed data (tissue image) and every built stage's files."""
    dataset = wildcards.dataset
    return {
        "qc": f"results/{dataset}/qc.json",
        "preprocessed": f"results/{dataset}/preprocessed.h5ad",
        "stages": plan_files(report_plan(dataset)),
    }


def report_inputs(wildcards):
    inputs = narrative_inputs(wildcards)
    if narrative_config(wildcards.dataset).get("enabled", True):
        inputs["narrative"] = f"results/{wildcards.dataset}/report/narrative.json"
    return inputs


rule narrative:
    """Tissue-blind prompt from aggregated metrics (checked for leaks); MedGemma's text when a checkpoint is set."""
    input:
        unpack(narrative_inputs),
    output:
        "results/{dataset}/report/narrative.json",
    params:
        entry=dataset_entry,
        plan=report_plan_json,
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
