"""Shared plumbing: the library on the path, the validated config, each dataset's plan and settings, and
the params helpers every stage uses. Each stage's own input functions are in rules/inputs/<stage>.smk, which
its rule file includes first."""

import functools
import json
import re
import shlex
import sys
from pathlib import Path

# This checkout's workflow/ folder, from this file's own location: right also when the workflow is used as a
# module of another (workflow.basedir is then the including workflow's folder).
WORKFLOW_DIR = Path(str(workflow.current_basedir)).parent
REPO_DIR = WORKFLOW_DIR.parent
# scripts and this file import the library from src/ without an install
SRC = str(REPO_DIR / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
# Jobs (local, conda, cluster) see the same library through PYTHONPATH, and name their entry point as
# "$TISSUELENS_SCRIPTS/<name>.py": a path in the shell environment, not a param, so a moved checkout reruns nothing.
shell.prefix(f"export PYTHONPATH={shlex.quote(SRC)}${{{{PYTHONPATH:+:$PYTHONPATH}}}} "
             f"TISSUELENS_SCRIPTS={shlex.quote(str(WORKFLOW_DIR / 'scripts'))}; ")

from tissuelens.config import STEPS, config_path, step_settings, validate_config
from tissuelens.errors import InputError
from tissuelens.plan import dataset_plan, model_kind
from tissuelens.sheet import merge_sheet

try:
    merge_sheet(config)
    validate_config(config, source="config")
    # what runs for each dataset (tissuelens.plan), checked before any job: a bad reference fails here
    PLANS = {dataset: dataset_plan(config, dataset) for dataset in config["datasets"]}
except InputError as exc:
    raise WorkflowError(str(exc)) from None

DATASETS = list(config["datasets"])
MODELS = list(config.get("models") or {})
# Rules that take CUDA when present (device: auto) hold one `gpu`. On one machine at most one such job runs at a
# time unless `--resources gpu=N` says otherwise (on a CPU-only machine it only serialises them); a cluster
# executor leaves GPUs to its scheduler.
if workflow.local_exec and "gpu" not in workflow.global_resources:
    workflow.global_resources["gpu"] = 1


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in DATASETS),


def plan_of(dataset):
    return PLANS[dataset]


@functools.lru_cache(maxsize=None)
def settings(dataset, step):
    """A step's effective settings for the dataset, merged once (a dry run asks per job); read-only, shared."""
    return step_settings(config, dataset, step)


def as_param(values, drop=()):
    """Settings as a JSON string param, keys in `drop` left out (editing those reruns nothing here)."""
    return json.dumps({k: v for k, v in values.items() if k not in drop}, sort_keys=True)


def settings_of(step, drop=()):
    """Input function: a step's settings for the dataset as a JSON string param, without `drop`."""

    def param(wildcards):
        return as_param(settings(wildcards.dataset, step), drop)

    return param


def dataset_entry(wildcards):
    """The dataset's source options as JSON, without its step overrides (those rerun only their step)."""
    return as_param(config["datasets"][wildcards.dataset], STEPS)


def dataset_seed(wildcards):
    return config["datasets"][wildcards.dataset].get("seed", config.get("seed", 0))


def flag(name, *values):
    """`--name v1 v2 …` with each value shell-quoted, or '' when a value is None: a script's optional argument."""
    if not values or any(v is None for v in values):
        return ""
    return f"--{name} " + " ".join(shlex.quote(str(v)) for v in values)


def input_flag(name):
    """Params function: `--name <the job's input of that name, - as _>`, or '' when the job has no such input, so
    an optional argument always follows the input function that decides it."""

    def param(wildcards, input):
        files = input.get(name.replace("-", "_"))
        return flag(name, *([files] if isinstance(files, str) else files or []))

    return param


def marker_input(path):
    """A marker file named in config as a job input, or None when only this checkout holds it (the shipped
    config/markers/demo.csv in a module deployment or a test): the job finds that one itself
    (tissuelens.config.config_path), as it finds the scripts, so its absolute path is in no input or param and a
    moved checkout reruns nothing (an edit of it reruns nothing either, as with the scripts)."""
    return path if path and config_path(path) == Path(path) else None


def kind_model_pattern(kind):
    """Wildcard constraint matching exactly the models of one kind (so each embed rule owns its models)."""
    names = [m for m in MODELS if model_kind(config, m) == kind]
    return "|".join(re.escape(n) for n in names) if names else "(?!x)x"


def all_targets():
    """Each dataset's report (its inputs pull in every stage on for it) and its embed and Loki outputs."""
    return [t for d in DATASETS for t in
            [f"results/{d}/report/index.html", *embed_targets(d), *loki_task_targets(d)]]
