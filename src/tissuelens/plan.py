"""What runs for a dataset, read from the config alone: its embedding models (per kind), factorisation
variants, SAE models, Loki tasks and the datasets those tasks reference.

One answer for both sides: the workflow's input functions (workflow/rules/inputs/*.smk) plan jobs from it and the
report (report/stages.py) lists the sections it expects from it, so the two cannot drift apart. No torch
and no Snakemake here (tests/test_plan.py checks it on plain dicts). Bad references raise InputError naming
the key; the workflow turns that into a WorkflowError before any job runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tissuelens.analyze.groups import group_source, has_groups
from tissuelens.config import step_settings
from tissuelens.errors import InputError
from tissuelens.factorize.variants import GROUP_VARIANTS

# files each Loki task writes, relative to results/{dataset}/loki/{model}/
LOKI_TASK_FILES = {"annotate": ("annotation.parquet", "annotation.json"),
                   "retrieve": ("retrieval.parquet", "retrieval.json"),
                   "predex": ("predex_genes.csv", "predex_spots.parquet", "predex.json"),
                   "decompose": ("decompose.parquet", "decompose.json")}
LOKI_TASKS = tuple(LOKI_TASK_FILES)


def factorize_variants(config: dict, dataset: str) -> list[str]:
    """factorize.variants the dataset can train: pnmf only without coordinates, no mggp_ without groups."""
    settings = step_settings(config, dataset, "factorize")
    if settings["enabled"] is False:
        return []
    variants = list(settings["variants"])
    if not config["datasets"][dataset].get("spatial", False):
        variants = [v for v in variants if v == "pnmf"]
    if not has_groups(config, dataset):  # labels, or domains standing in for them (analyze.group_source)
        variants = [v for v in variants if v not in GROUP_VARIANTS]
    return variants


def model_kind(config: dict, model: str) -> str | None:
    return ((config.get("models") or {}).get(model) or {}).get("kind")


def embed_models(config: dict, dataset: str, kind: str | None = None) -> list[str]:
    """embed.models of the dataset (of one kind when given); a name not under `models:` is an error."""
    names = list(step_settings(config, dataset, "embed")["models"])
    defined = list(config.get("models") or {})
    unknown = [m for m in names if m not in defined]
    if unknown:
        raise InputError(f"datasets.{dataset}: embed.models names {', '.join(unknown)}, not defined under models: "
                         f"(defined: {', '.join(defined) or 'none'})")
    return [m for m in names if kind is None or model_kind(config, m) == kind]


def sae_models(config: dict, dataset: str) -> list[str]:
    """Embedded models an SAE trains on (sae.models, null = all of them)."""
    settings = step_settings(config, dataset, "sae")
    if settings["enabled"] is False:
        return []
    embedded = embed_models(config, dataset)
    chosen = settings["models"]
    return embedded if chosen is None else [m for m in chosen if m in embedded]


def factor_link(config: dict, dataset: str, variants: list[str]) -> str | None:
    """The variant whose factors SAE features are correlated with (sae.link_factors; None: no linking)."""
    link = step_settings(config, dataset, "sae")["link_factors"]
    if link is False or not config["datasets"][dataset].get("spatial", False):
        return None
    if link is None or link is True:
        return variants[0] if variants else None
    if link not in variants:
        raise InputError(f"datasets.{dataset}: sae.link_factors '{link}' is not a factorize variant run for it")
    return link


def loki_tasks(config: dict, dataset: str) -> list[str]:
    """Loki tasks on for the dataset. annotate: a marker, sentence or bulk file is set; decompose: a reference
    is set; retrieve / predex: `enabled: true`, or auto on spatial datasets whose embed.loki.image is not
    false (without an image there the rule writes a skipped note)."""
    loki = step_settings(config, dataset, "embed")["loki"]

    def on(task):
        settings = loki[task]
        if task == "annotate":
            return bool(settings.get("markers") or settings.get("sentences") or settings.get("bulk"))
        if task == "decompose":
            return bool(settings.get("reference"))
        if settings["enabled"] == "auto":
            return bool(config["datasets"][dataset].get("spatial")) and loki["image"] is not False
        return settings["enabled"] is True

    return [task for task in LOKI_TASKS if on(task)]


def loki_references(config: dict, dataset: str, tasks: list[str]) -> dict[str, list[str]]:
    """{task: reference datasets} of the tasks given (retrieve, decompose: one or none; predex: a list
    of other slides, [] = within the slide). A name that is not a dataset of the config is an error."""
    loki = step_settings(config, dataset, "embed")["loki"]
    datasets = list(config["datasets"])
    out = {}
    for task in ("retrieve", "predex", "decompose"):
        reference = loki[task].get("reference") if task in tasks else None
        names = [] if reference is None else [reference] if isinstance(reference, str) else list(reference)
        for name in names:
            if name not in datasets or (task == "predex" and name == dataset):
                which = "another dataset" if task == "predex" else "a dataset"
                raise InputError(f"datasets.{dataset}: embed.loki.{task}.reference names '{name}', which is not "
                                 f"{which} of this config (datasets: {', '.join(datasets)})")
        out[task] = names
    return out


@dataclass(frozen=True)
class DatasetPlan:
    """What runs for one dataset (an empty list: that stage or task is off for it)."""

    dataset: str
    variants: list[str]  # factorize variants trained
    models: list[str]  # embed.models, in config order
    kinds: dict[str, list[str]]  # the same models by kind (geneformer, loki, tahoe)
    sae_models: list[str]
    factor_link: str | None  # variant the SAE features are correlated with
    loki_tasks: list[str]  # run for each Loki model (empty without one)
    references: dict[str, list[str]] = field(default_factory=dict)  # Loki task -> reference datasets
    group_source: str | None = None  # domain column standing in for labels (analyze.group_source)
    perturb: bool = False  # Geneformer in-silico perturbation asked for

    def of_kind(self, kind: str) -> list[str]:
        return self.kinds.get(kind, [])


def dataset_plan(config: dict, dataset: str) -> DatasetPlan:
    """Everything above for one dataset, checked: a bad reference raises InputError here."""
    variants = factorize_variants(config, dataset)
    models = embed_models(config, dataset)
    kinds: dict[str, list[str]] = {}
    for model in models:
        kinds.setdefault(model_kind(config, model), []).append(model)
    sae = sae_models(config, dataset)
    tasks = loki_tasks(config, dataset) if kinds.get("loki") else []
    perturb = step_settings(config, dataset, "embed")["perturb"]
    return DatasetPlan(
        dataset=dataset, variants=variants, models=models, kinds=kinds, sae_models=sae,
        factor_link=factor_link(config, dataset, variants) if sae else None,  # checked only where an SAE runs
        loki_tasks=tasks, references=loki_references(config, dataset, tasks),
        group_source=group_source(config, dataset), perturb=bool(perturb["genes"] or perturb["auto_genes"]))
