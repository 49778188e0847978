import json
import os
import sys
from pathlib import Path

# scripts and this file import the library from src/ without an install
SRC = str(Path(workflow.basedir).parent / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)

from tissuelens.config import step_settings, validate_config
from tissuelens.errors import InputError

try:
    validate_config(config, source="config")
except InputError as exc:
    raise WorkflowError(str(exc)) from None

DATASETS = list(config["datasets"])
SCRIPTS = Path(workflow.basedir).parent / "scripts"


wildcard_constraints:
    dataset="|".join(DATASETS),


def script(name):
    """Path of a scripts/*.py entry point."""
    return str(SCRIPTS / f"{name}.py")


def dataset_entry(wildcards):
    """The dataset's own config entry (source and its options), as JSON for --dataset-config."""
    return json.dumps(config["datasets"][wildcards.dataset], sort_keys=True)


def dataset_seed(wildcards):
    return config["datasets"][wildcards.dataset].get("seed", config.get("seed", 0))


def settings_of(step):
    """Input function: a step's effective settings for the dataset, as a JSON string param."""

    def settings(wildcards):
        return json.dumps(step_settings(config, wildcards.dataset, step), sort_keys=True)

    return settings


def download_inputs(wildcards):
    """Local files a download reads, so that editing them reruns it."""
    entry = config["datasets"][wildcards.dataset]
    files = []
    if entry["source"] == "local" and Path(entry["path"]).is_file():
        files.append(entry["path"])
    if "labels" in entry:
        files.append(entry["labels"]["path"])
    return files


def dataset_targets(dataset):
    """The end target(s) of one dataset: its final outputs."""
    return [f"results/{dataset}/preprocessed.h5ad"]


def all_targets():
    return [t for d in DATASETS for t in dataset_targets(d)]
