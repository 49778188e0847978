"""The config builders of the tests and benches: the demo (config/config.yaml, shrunk), the scale-out
config (tests/configs/scaleout.yaml, its dataset copied) and the size config; `write_config` puts one where
Snakemake reads it (<workdir>/config/config.yaml)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "config" / "config.yaml"
TEST_CONFIG = REPO / "tests" / "configs" / "scaleout.yaml"
SIZE_CONFIG = REPO / "tests" / "configs" / "size.yaml"

# demo_config(every_stage=True): the five PNMF-GP variants, Geneformer and the tiny random Loki with its tasks
VARIANTS = ["pnmf", "svgp", "mggp_svgp", "lcgp", "mggp_lcgp"]
LOKI = "loki_tiny"

# per-dataset overrides that leave a dataset with download, preprocess, one factorisation, report
MINIMAL = {"embed": {"models": []}, "sae": {"enabled": False}, "factorize": {"variants": ["pnmf"]}}


def demo_config(*, labels: bool = True, every_stage: bool = False) -> dict:
    """config/config.yaml, the demo, shrunk so a run takes minutes on 2 cores.

    every_stage=False: 150 spots, one short PNMF, no embedding models, SAE off (the report shows the other
    stages as not run). every_stage=True: 200 spots and every stage the demo builds with tiny models (as
    tests/configs/scaleout.yaml): the five variants, Geneformer and Loki/OmiCLIP with its four tasks, SAEs.
    labels=False removes the demo's group_key, so the groups are the spatial domains (analyze.group_source).
    """
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    demo = config["datasets"]["demo"]
    if not labels:
        assert demo.pop("group_key") == "group"  # the labels this config removes
    if not every_stage:
        demo["synthetic"] = {**demo["synthetic"], "n_spots": 150, "n_genes": 40, "image_size": 96}
        config["factorize"] = {**config["factorize"], "variants": ["pnmf"], "n_factors": 3, "max_iter": 30,
                               "checkpoint_every": 0, "device": "cpu"}
        config["embed"] = {**config["embed"], "models": []}
        config["sae"] = {**config["sae"], "enabled": False}
        return config
    demo["synthetic"] = {**demo["synthetic"], "n_spots": 200, "n_genes": 60, "image_size": 96}
    config["preprocess"] = {**config["preprocess"], "n_top_genes": 40}
    config["analyze"] = {**config["analyze"], "domains": {"n_neighbors": 10, "spatial_resolution": 0.5},
                         "spatial_stats": {"n_perms": 20}}
    config["factorize"] = {**config["factorize"], "variants": VARIANTS, "n_factors": 3, "n_inducing": 20,
                           "kmeans_n_init": 1, "n_neighbors": 5, "max_iter": 20, "checkpoint_every": 0,
                           "device": "cpu"}
    config["sae"] = {**config["sae"], "expansion_factor": 4, "k": 4, "training_tokens": 4096, "batch_size": 256,
                     "eval_tokens": 512, "dead_feature_window": 10, "dashboard_features": 4, "device": "cpu"}
    config["models"]["geneformer"]["random"].update({"n_layers": 1, "hidden_size": 16, "intermediate_size": 32,
                                                     "max_input_size": 128, "extra_genes": 10})
    config["models"][LOKI]["random"] = {"n_layers": 1, "hidden_size": 16, "n_heads": 2, "seed": 0}
    embed = config["embed"]
    assert embed["models"] == ["geneformer", LOKI]
    embed.update({"batch_size": 32, "consistency": {"enabled": False}})
    embed["activations"] = {**embed["activations"], "max_tokens_per_cell": 32}
    embed["perturb"] = {**embed["perturb"], "auto_genes": 1, "max_cells": 10}
    if not labels:  # the demo's start and goal groups name its labels; without them the groups are domains D1, D2, ...
        embed["perturb"].update({"start_group": "D1", "goal_group": "D2"})
    embed["loki"] = {**embed["loki"], "batch_size": 32}
    embed["loki"]["decompose"] = {**embed["loki"]["decompose"], "num_epochs": 20}
    return config


def scaleout_config(datasets=("a",), minimal=()) -> dict:
    """tests/configs/scaleout.yaml (every stage, tiny sizes) with its dataset copied under `datasets`;
    those also named in `minimal` skip embeddings and SAEs and train one variant (fewer jobs)."""
    config = yaml.safe_load(TEST_CONFIG.read_text())
    template = next(iter(config["datasets"].values()))
    config["datasets"] = {}
    for i, name in enumerate(datasets):
        entry = dict(copy.deepcopy(template), seed=i)
        if name in minimal:
            entry.update(copy.deepcopy(MINIMAL))
        config["datasets"][name] = entry
    for model in config.get("models", {}).values():
        if "genes_from_dataset" in model.get("random", {}):
            model["random"]["genes_from_dataset"] = datasets[0]
    return config


def size_config(n_spots: int | None = None, n_genes: int | None = None) -> dict:
    """tests/configs/size.yaml (every stage above the libraries' size thresholds), optionally resized."""
    config = yaml.safe_load(SIZE_CONFIG.read_text())
    synthetic = next(iter(config["datasets"].values()))["synthetic"]
    synthetic.update({k: v for k, v in (("n_spots", n_spots), ("n_genes", n_genes)) if v is not None})
    return config


def with_changes(config: dict, **changes) -> dict:
    """A copy of `config` with values set at dotted paths, e.g. with_changes(c, **{"datasets.a.sae": {...}})."""
    out = copy.deepcopy(config)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return out


def write_config(workdir: Path, config: dict) -> None:
    """`config` as <workdir>/config/config.yaml, the file a run in `workdir` reads."""
    path = Path(workdir) / "config" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
