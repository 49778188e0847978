"""Fixtures shared by the test files: scripts run as a rule runs them, and the full workflow runs that several
files read (session-scoped, each built once: `finished_run`, `small_demo`, `unlabelled_demo`,
`demo_preprocessed`). Snakemake runs and configs come from tests/helpers/ (workflow.py, configs.py).

Tiers (markers registered in pyproject.toml): `make test` runs every test but those marked workflow, cluster,
stack, size or slow, plus the one `smoke` workflow run; `make test-all` runs them all."""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager

import pytest
from helpers.configs import demo_config, scaleout_config, write_config
from helpers.workflow import BIN, REPO, snakemake

# rules call `python`/`snakemake` from PATH: make it this interpreter's environment
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("MPLBACKEND", "Agg")


def run_script(name: str, *args, cwd=None, check=False) -> subprocess.CompletedProcess:
    """Run workflow/scripts/<name>.py like a rule does; returns the completed process (text output)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "workflow" / "scripts" / f"{name}.py"), *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single `error:` line a script prints for bad input."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, f"expected one error line, got:\n{proc.stderr}"
    return lines[0]


@contextmanager
def torch_threads(n: int):
    """Run with `n` torch threads, restoring the previous count (tests must not leak the setting)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def small_synthetic():
    from tissuelens.datasets.synthetic import make_synthetic

    return make_synthetic(n_spots=200, n_genes=60, n_spatial_factors=2, n_groups=3, seed=1, image_size=128)


# Copied once, so that touching a script or moving the tree does not touch the repository.
TREE = ("workflow", "src")


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """(workflow tree, directory of a completed run): dataset `a` with every stage, `b` minimal.

    One full workflow run shared by the rerun and report tests (they copy it before changing it).
    """
    import shutil

    tree = tmp_path_factory.mktemp("tree")
    for part in TREE:
        shutil.copytree(REPO / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    run = tmp_path_factory.mktemp("finished")
    write_config(run, scaleout_config(("a", "b"), minimal=("b",)))
    snakemake(run, snakefile=tree / "workflow" / "Snakefile", timeout=1500)
    return tree, run


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    """Directory of the small demo built to its end target (demo_config(): 150 spots, one PNMF, no
    embedding models): the fast tier's one workflow run (tests/test_report_workflow.py)."""
    work = tmp_path_factory.mktemp("demo")
    write_config(work, demo_config())
    snakemake(work)
    return work


@pytest.fixture(scope="session")
def unlabelled_demo(tmp_path_factory):
    """Directory of the demo without labels built with every stage (demo_config(labels=False,
    every_stage=True)): shared by tests/test_demo_unlabelled.py and tests/test_analyze_workflow.py."""
    work = tmp_path_factory.mktemp("unlabelled")
    write_config(work, demo_config(labels=False, every_stage=True))
    snakemake(work, timeout=3600)  # ~30 min on 2 busy cores
    return work


@pytest.fixture(scope="session")
def demo_preprocessed(tmp_path_factory):
    """(the demo's preprocessed.h5ad as the core stack's rules write it, config/config.yaml): the input
    of the rules run in their own stacks (tests/test_stacks.py, tests/test_tahoe_model.py)."""
    import yaml

    workdir = tmp_path_factory.mktemp("demo")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    write_config(workdir, config)
    snakemake(workdir, "results/demo/preprocessed.h5ad", timeout=600)
    return workdir / "results" / "demo" / "preprocessed.h5ad", config


# under pytest-xdist, the longest groups start first (longest-first scheduling): the size run, the SLURM
# cluster, then the other full workflow runs, the stacks and the slow tests, then the unit tests
HEAVY_FIRST = ("size", "cluster", "workflow", "stack", "slow")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the group marks into node ids
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test-all` runs `-n 2 --dist loadgroup`), keep each test file on one worker, and
    files that share a session fixture of these tests (a full workflow run) on the same one, so that no module
    or session fixture is built twice; and hand out the heavy groups first."""
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers, which collect for the controller
        return
    import dataclasses
    from pathlib import Path

    tests = Path(__file__).parent
    parent: dict[str, str] = {}

    def root(node: str) -> str:
        while parent.setdefault(node, node) != node:
            node = parent[node]
        return node

    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        for name, defs in (info.name2fixturedefs.items() if info else ()):
            if defs[-1].scope == "session" and Path(defs[-1].func.__code__.co_filename).is_relative_to(tests):
                parent[root(item.path.name)] = root(f"fixture:{name}")
    rank: dict[str, int] = {}
    for item in items:
        group = root(item.path.name)
        item.add_marker(pytest.mark.xdist_group(group))
        node_id = getattr(item, "_id", None)
        if dataclasses.is_dataclass(node_id):
            # pytest 9 derives nodeid from `_id`, so xdist 3.8's `_nodeid` suffix no longer reaches its scheduler:
            # put it on the id's string form, after any parameters, where the scheduler reads the group
            item._id = dataclasses.replace(node_id)
            object.__setattr__(item._id, "_str_cache", f"{node_id}@{group}")
        heavy = [HEAVY_FIRST.index(m.name) for m in item.iter_markers() if m.name in HEAVY_FIRST]
        rank[group] = min([rank.get(group, len(HEAVY_FIRST)), *heavy])
    items.sort(key=lambda item: rank[root(item.path.name)])

