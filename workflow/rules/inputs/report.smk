# Input functions and params of the rules in ../report.smk, which includes this file (snakemake --lint wants
# functions and rules in separate files).

from tissuelens.report.stages import narrative_plan, plan_files, stage_plan


def producible(path):
    """True when some rule of this workflow writes `path`, results/<dataset>/… (a stage whose rules are not
    included is absent)."""
    return _producible(path.split("/", 2)[2])


@functools.lru_cache(maxsize=None)
def _producible(within_dataset):
    # the dataset wildcard admits every dataset alike, so the answer is one per path below results/<dataset>/
    path = f"results/{DATASETS[0]}/{within_dataset}"
    return any(rule.is_producer(path) for rule in workflow.rules)


@functools.lru_cache(maxsize=None)
def report_plan(dataset):
    """Per stage: status (built, disabled, absent) and the files the report reads (tissuelens.report.stages)."""
    return stage_plan(config, dataset, producible, plan_of(dataset))


def report_plan_json(wildcards):
    return as_param(report_plan(wildcards.dataset))


def narrative_plan_json(wildcards):
    return as_param(narrative_plan(report_plan(wildcards.dataset)))


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


def dataset_inputs(dataset, plan):
    """QC, the preprocessed data (tissue image) and the stage files `plan` lists."""
    return {
        "qc": f"results/{dataset}/qc.json",
        "preprocessed": f"results/{dataset}/preprocessed.h5ad",
        "stages": plan_files(plan),
    }


def narrative_inputs(wildcards):
    """The narrative reads the files its prompt uses, not every stage file the report shows."""
    return dataset_inputs(wildcards.dataset, narrative_plan(report_plan(wildcards.dataset)))


def report_inputs(wildcards):
    inputs = dataset_inputs(wildcards.dataset, report_plan(wildcards.dataset))
    if narrative_config(wildcards.dataset).get("enabled", True):
        inputs["narrative"] = f"results/{wildcards.dataset}/report/narrative.json"
    return inputs
