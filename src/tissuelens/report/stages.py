"""Which stage outputs a dataset's report reads, from the config alone.

`stage_plan` lists, per stage, the files the stage writes for the dataset (its *units*: factorize
variants, embedding models, SAE models). The Snakefile keeps only files some rule in the workflow can
produce, so a stage whose rules are not included yet becomes a section that says so, and the report is
rebuilt whenever any listed file changes.
"""

from __future__ import annotations

from typing import Callable

from tissuelens.analyze.groups import has_groups
from tissuelens.config import step_settings

MGGP = ("mggp_svgp", "mggp_lcgp")

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


def _as_list(value) -> list[str]:
    if isinstance(value, dict):
        return [k for k, v in value.items() if v is not False]
    if isinstance(value, (list, tuple)):  # names, or entries with a name (e.g. embed.models)
        return [str(v["name"]) if isinstance(v, dict) and "name" in v else str(v) for v in value]
    if isinstance(value, str):
        return [value]
    return []


def factorize_variants(config: dict, dataset: str) -> list[str]:
    settings = step_settings(config, dataset, "factorize")
    if settings.get("enabled", True) is False:
        return []
    entry = config["datasets"][dataset]
    variants = _as_list(settings.get("variants", []))
    if not entry.get("spatial", False):
        variants = [v for v in variants if v == "pnmf"]
    if not has_groups(config, dataset):  # labels, or domains standing in for them (analyze.group_source)
        variants = [v for v in variants if v not in MGGP]
    return variants


def embed_models(config: dict, dataset: str) -> list[str]:
    settings = step_settings(config, dataset, "embed")
    if settings.get("enabled", True) is False:
        return []
    return _as_list(settings.get("models", []))


def sae_models(config: dict, dataset: str) -> list[str]:
    settings = step_settings(config, dataset, "sae")
    if settings.get("enabled", True) is False:
        return []
    embedded = embed_models(config, dataset)
    chosen = settings.get("models")
    return embedded if chosen is None else [m for m in _as_list(chosen) if m in embedded]


UNITS = {"factorize": factorize_variants, "embed": embed_models, "sae": sae_models}
UNIT_LABEL = {"factorize": "variants", "embed": "models", "sae": "models"}


def _configured(config: dict, dataset: str, stage: str, name: str) -> bool:
    """Perturbation tables only where the dataset asks for a perturbation (genes or auto_genes)."""
    if stage == "embed" and name.startswith("perturbation"):
        p = step_settings(config, dataset, "embed").get("perturb") or {}
        return bool(p.get("genes") or p.get("auto_genes"))
    return True


def stage_plan(config: dict, dataset: str, producible: Callable[[str], bool] = lambda path: True) -> dict:
    """{stage: {"status", "reason", "units": {unit: {file name: path}}, "files": {name: path}}}.

    status: "built" (at least one file of the stage is produced by a rule), "disabled" (the config turns
    the stage off or names no units for this dataset), "absent" (no rule in the workflow produces it).
    """
    plan = {}
    for stage in STAGES:
        units = UNITS[stage](config, dataset)
        entry = {"status": "built", "reason": "", "units": {}, "files": {}}
        if not units:
            entry["status"] = "disabled"
            entry["reason"] = f"the config enables no {stage} {UNIT_LABEL[stage]} for this dataset"
            plan[stage] = entry
            continue
        base = f"results/{dataset}/{stage}"
        for unit in units:
            files = {name: f"{base}/{unit}/{name}" for name in UNIT_FILES[stage]}
            entry["units"][unit] = {k: v for k, v in files.items() if producible(v) and _configured(config, dataset, stage, k)}
        entry["files"] = {n: f"{base}/{n}" for n in STAGE_FILES[stage] if producible(f"{base}/{n}")}
        if not entry["files"] and not any(entry["units"].values()):
            entry["status"] = "absent"
            entry["reason"] = f"this workflow has no rule that builds the {stage} stage's outputs yet"
            entry["units"] = {}
        else:
            entry["units"] = {u: f for u, f in entry["units"].items() if f}
        plan[stage] = entry
    plan["analyze"] = analyze_plan(dataset, producible)
    plan["loki"] = loki_plan(config, dataset, producible)
    return plan


# files of the analyze stage (not per unit), relative to results/{dataset}/analyze/
ANALYZE_FILES = ("domains.parquet", "annotation.parquet", "domain_types.csv", "markers_used.csv",
                 "nhood_enrichment.csv", "spatially_variable_genes.csv", "doublets.parquet", "summary.json",
                 "agreement.csv")


def analyze_plan(dataset: str, producible: Callable[[str], bool]) -> dict:
    base = f"results/{dataset}/analyze"
    files = {n: f"{base}/{n}" for n in ANALYZE_FILES if producible(f"{base}/{n}")}
    if not files:
        return {"status": "absent", "units": {}, "files": {},
                "reason": "this workflow has no rule that builds the analyze stage's outputs yet"}
    return {"status": "built", "reason": "", "units": {}, "files": files}


# files of the Loki tasks per task, relative to results/{dataset}/loki/{model}/
LOKI_TASK_FILES = {"annotate": ("annotation.parquet", "annotation.json"),
                   "retrieve": ("retrieval.parquet", "retrieval.json"),
                   "predex": ("predex_genes.csv", "predex_spots.parquet", "predex.json"),
                   "decompose": ("decompose.parquet", "decompose.json")}


def loki_task_enabled(config: dict, dataset: str, task: str) -> bool:
    """annotate: when a marker, sentence or bulk file is set; decompose: when a reference dataset is set; retrieve / predex:
    `enabled: true`, or auto on spatial datasets whose embed.loki.image is not false (without an image there
    the rule writes a skipped note)."""
    loki = step_settings(config, dataset, "embed")["loki"]
    settings = loki[task]
    if task == "annotate":
        return bool(settings.get("markers") or settings.get("sentences") or settings.get("bulk"))
    if task == "decompose":
        return bool(settings.get("reference"))
    if settings["enabled"] == "auto":
        return bool(config["datasets"][dataset].get("spatial")) and loki["image"] is not False
    return settings["enabled"] is True


def loki_models(config: dict, dataset: str) -> list[str]:
    models = config.get("models") or {}
    return [m for m in embed_models(config, dataset) if (models.get(m) or {}).get("kind") == "loki"]


def loki_plan(config: dict, dataset: str, producible: Callable[[str], bool]) -> dict:
    """Per Loki model: the files of its enabled tasks (annotate, retrieve, predex, decompose)."""
    units = {}
    for model in loki_models(config, dataset):
        base = f"results/{dataset}/loki/{model}"
        files = {name: f"{base}/{name}" for task, names in LOKI_TASK_FILES.items()
                 if loki_task_enabled(config, dataset, task) for name in names}
        files = {k: v for k, v in files.items() if producible(v)}
        if files:
            units[model] = files
    if not units:
        return {"status": "disabled", "units": {}, "files": {}, "reason": "no Loki task is enabled for this dataset"}
    return {"status": "built", "reason": "", "units": units, "files": {}}


def plan_files(plan: dict) -> list[str]:
    """Every file a plan lists (the report's stage inputs)."""
    out = []
    for entry in plan.values():
        out.extend(entry["files"].values())
        for files in entry["units"].values():
            out.extend(files.values())
    return out
