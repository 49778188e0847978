import json
import shlex
import sys
from pathlib import Path

# scripts and this file import the library from src/ without an install
SRC = str(Path(workflow.basedir).parent / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
# jobs (local, conda, cluster) see the same library through PYTHONPATH
shell.prefix(f"export PYTHONPATH={shlex.quote(SRC)}${{{{PYTHONPATH:+:$PYTHONPATH}}}}; ")

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


STEP_KEYS = ("preprocess", "factorize", "embed", "sae", "analyze", "report")


def dataset_entry(wildcards):
    """The dataset's source options as JSON, without its step overrides (those rerun only their step)."""
    entry = config["datasets"][wildcards.dataset]
    return json.dumps({k: v for k, v in entry.items() if k not in STEP_KEYS}, sort_keys=True)


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
