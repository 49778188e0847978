"""Which stage outputs a dataset's report reads, from the config alone.

`stage_plan` lists, per stage, the files the stage writes for the dataset (its *units*: factorize
variants, embedding models, SAE models, as tissuelens.plan decides them). The Snakefile keeps only files some rule in the workflow can
produce, so a stage whose rules are not included yet becomes a section that says so, and the report is
rebuilt whenever any listed file changes.
"""

from __future__ import annotations

from typing import Callable

from tissuelens.plan import LOKI_TASK_FILES, DatasetPlan, dataset_plan


# files per unit, by stage: name -> path relative to results/{dataset}/<stage>/<unit>/
UNIT_FILES = {
    "factorize": ("metrics.json", "factors.npy", "loadings.npy", "elbo.csv", "gene_enrichment.json"),
    "embed": ("embeddings.h5ad", "embedding_metrics.json", "metrics.json", "activations/meta.json", "perturbation.tsv",
              "perturbation_genes.parquet"),
    "sae": ("metrics.json", "features.parquet", "feature_genes.parquet", "feature_groups.parquet",
            "feature_factors.parquet", "loss_curve.png", "cell_activations.npz", "dashboard.html"),
}
# files per stage (not per unit), relative to results/{dataset}/<stage>/
STAGE_FILES = {"factorize": ("comparison.csv",), "embed": (), "sae": ()}
STAGES = tuple(UNIT_FILES)
PLAN_STAGES = (*STAGES, "analyze")  # every stage a plan lists (the analyze stage has files, no units)


# a stage's units: the DatasetPlan field that lists them
UNITS = {"factorize": "variants", "embed": "models", "sae": "sae_models"}
UNIT_LABEL = {"factorize": "variants", "embed": "models", "sae": "models"}


def _configured(plan: DatasetPlan, stage: str, name: str) -> bool:
    """Perturbation tables only where the dataset asks for a perturbation (genes or auto_genes)."""
    return plan.perturb or not (stage == "embed" and name.startswith("perturbation"))


def stage_plan(config: dict, dataset: str, producible: Callable[[str], bool] = lambda path: True,
               runs: DatasetPlan | None = None) -> dict:
    """{stage: {"status", "reason", "units": {unit: {file name: path}}, "files": {name: path}}}.

    status: "built" (at least one file of the stage is produced by a rule), "disabled" (the config turns
    the stage off or names no units for this dataset), "absent" (no rule in the workflow produces it).
    """
    runs = runs or dataset_plan(config, dataset)  # what runs for the dataset (tissuelens.plan)
    plan = {}
    for stage in STAGES:
        units = getattr(runs, UNITS[stage])
        entry = {"status": "built", "reason": "", "units": {}, "files": {}}
        if not units:
            entry["status"] = "disabled"
            entry["reason"] = f"the config enables no {stage} {UNIT_LABEL[stage]} for this dataset"
            plan[stage] = entry
            continue
        base = f"results/{dataset}/{stage}"
        for unit in units:
            files = {name: f"{base}/{unit}/{name}" for name in UNIT_FILES[stage]}
            entry["units"][unit] = {k: v for k, v in files.items() if producible(v) and _configured(runs, stage, k)}
        entry["files"] = {n: f"{base}/{n}" for n in STAGE_FILES[stage] if producible(f"{base}/{n}")}
        if not entry["files"] and not any(entry["units"].values()):
            entry["status"] = "absent"
            entry["reason"] = f"this workflow has no rule that builds the {stage} stage's outputs yet"
            entry["units"] = {}
        else:
            entry["units"] = {u: f for u, f in entry["units"].items() if f}
        plan[stage] = entry
    plan["analyze"] = analyze_plan(dataset, producible)
    plan["loki"] = loki_plan(runs, producible)
    return plan


# files of the analyze stage (not per unit), relative to results/{dataset}/analyze/
ANALYZE_FILES = ("domains.parquet", "domains.json", "annotation.parquet", "domain_types.csv", "markers_used.csv",
                 "nhood_enrichment.csv", "spatially_variable_genes.csv", "doublets.parquet", "summary.json",
                 "agreement.csv")


def analyze_plan(dataset: str, producible: Callable[[str], bool]) -> dict:
    base = f"results/{dataset}/analyze"
    files = {n: f"{base}/{n}" for n in ANALYZE_FILES if producible(f"{base}/{n}")}
    if not files:
        return {"status": "absent", "units": {}, "files": {},
                "reason": "this workflow has no rule that builds the analyze stage's outputs yet"}
    return {"status": "built", "reason": "", "units": {}, "files": files}


def loki_plan(runs: DatasetPlan, producible: Callable[[str], bool]) -> dict:
    """Per Loki model: the files of its enabled tasks (annotate, retrieve, predex, decompose)."""
    units = {}
    for model in runs.of_kind("loki"):
        base = f"results/{runs.dataset}/loki/{model}"
        files = {name: f"{base}/{name}" for task in runs.loki_tasks for name in LOKI_TASK_FILES[task]}
        files = {k: v for k, v in files.items() if producible(v)}
        if files:
            units[model] = files
    if not units:
        return {"status": "disabled", "units": {}, "files": {}, "reason": "no Loki task is enabled for this dataset"}
    return {"status": "built", "reason": "", "units": units, "files": {}}


# the files the narrative's prompt reads (tissuelens.report.prompt), by stage: its job waits for these alone
NARRATIVE_FILES = {
    "factorize": ("metrics.json", "factors.npy"),
    "embed": ("embedding_metrics.json", "metrics.json"),
    "sae": ("metrics.json", "features.parquet"),
    "analyze": ("summary.json", "markers_used.csv", "domains.parquet", "spatially_variable_genes.csv", "agreement.csv"),
}


def narrative_plan(plan: dict) -> dict:
    """`plan` with only the files the narrative reads (NARRATIVE_FILES); each stage's status and units kept."""
    def kept(files: dict, stage: str) -> dict:
        return {name: path for name, path in files.items() if name in NARRATIVE_FILES.get(stage, ())}

    return {stage: {**entry, "files": kept(entry["files"], stage),
                    "units": {unit: kept(files, stage) for unit, files in entry["units"].items()}}
            for stage, entry in plan.items()}


def plan_files(plan: dict) -> list[str]:
    """Every file a plan lists (the report's stage inputs)."""
    out = []
    for entry in plan.values():
        out.extend(entry["files"].values())
        for files in entry["units"].values():
            out.extend(files.values())
    return out
