"""Reruns redo only what changed: after one full run of two tiny datasets, each test edits a copy of
the finished directory and checks what `snakemake -n` plans (workflow/profiles/default: rerun-triggers mtime,
input, params)."""

from __future__ import annotations

import os

import pytest
from helpers.configs import scaleout_config, write_config
from helpers.workflow import copy_run, plan

pytestmark = pytest.mark.workflow

def workflow_copy(finished_run, tmp_path):
    tree, run = finished_run
    return tree, copy_run(run, tmp_path / "run")


def dry(tree, run, *args):
    return plan(run, *args, snakefile=tree / "workflow" / "Snakefile")


def datasets_of(jobs):
    return {wc.get("dataset") for _, wc in jobs}


def test_a_dry_run_after_a_full_run_plans_nothing(finished_run, tmp_path):
    tree, run = workflow_copy(finished_run, tmp_path)
    assert dry(tree, run) == []
    # a dataset's own target too
    assert dry(tree, run, "results/a/report/index.html") == []


def test_changing_one_datasets_factorize_setting_reruns_only_its_factorize_descendants(finished_run, tmp_path):
    tree, run = workflow_copy(finished_run, tmp_path)
    expected = [job for job in dry(tree, run, "--forcerun", "factorize") if job[1].get("dataset") == "a"]
    assert expected, "no factorize job planned by --forcerun factorize"

    config = scaleout_config(("a", "b"), minimal=("b",))
    factorize = config["datasets"]["a"].setdefault("factorize", {})
    factorize["n_factors"] = factorize.get("n_factors", config.get("factorize", {}).get("n_factors", 10)) + 1
    write_config(run, config)

    jobs = dry(tree, run)
    assert datasets_of(jobs) == {"a"}, jobs
    rules = {rule for rule, _ in jobs}
    assert "factorize" in rules and "report" in rules, rules
    assert not rules & {"download", "preprocess"}, rules
    assert sorted(jobs, key=repr) == sorted(expected, key=repr)


def test_a_variant_only_setting_retrains_only_the_variants_that_read_it(finished_run, tmp_path):
    tree, run = workflow_copy(finished_run, tmp_path)
    config = scaleout_config(("a", "b"), minimal=("b",))
    config["datasets"]["a"].setdefault("factorize", {})["n_inducing"] = 25  # SVGP only
    write_config(run, config)
    jobs = dry(tree, run)
    assert {wc["variant"] for rule, wc in jobs if rule in ("factorize", "analyze_factors")} == {"svgp"}, jobs
    assert datasets_of(jobs) == {"a"}, jobs

    # an LCGP-only setting retrains nothing where no LCGP variant runs (a: pnmf and svgp)
    config["datasets"]["a"]["factorize"] = {"n_neighbors": 7, "lcgp_rank": 30}
    write_config(run, config)
    assert not {rule for rule, _ in dry(tree, run)} & {"factorize", "analyze_factors"}


def test_adding_a_second_dataset_builds_only_it(finished_run, tmp_path):
    tree, run = workflow_copy(finished_run, tmp_path)
    write_config(run, scaleout_config(("a", "b", "c"), minimal=("b", "c")))
    jobs = dry(tree, run)
    assert datasets_of(jobs) == {"c"}, jobs
    rules = {rule for rule, _ in jobs}
    assert {"download", "preprocess", "report"} <= rules, rules


def test_touching_scripts_and_library_reruns_nothing(finished_run, tmp_path):
    tree, run = workflow_copy(finished_run, tmp_path)
    touched = [tree / "workflow" / "scripts" / "download.py", tree / "workflow" / "scripts" / "preprocess.py"]
    touched += sorted((tree / "src" / "tissuelens").rglob("*.py"))
    saved = {path: path.stat() for path in touched}
    try:
        for path in touched:
            path.touch()
        assert dry(tree, run) == []
    finally:  # the tree is shared by this module's tests
        for path, st in saved.items():
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_deleting_an_intermediate_rebuilds_only_its_descendants(finished_run, tmp_path):
    tree, run = workflow_copy(finished_run, tmp_path)
    intermediate = "results/a/preprocessed.h5ad"
    expected = dry(tree, run, "--forcerun", intermediate)
    (run / intermediate).unlink()

    # Snakemake's rule: a missing intermediate whose consumers are all up to date is not needed
    # (snakemake#1978), so a plain run leaves it missing ...
    assert dry(tree, run) == []
    # ... and naming it next to the default target rebuilds it and exactly its descendants
    jobs = dry(tree, run, "all", intermediate)
    assert ("preprocess", {"dataset": "a"}) in jobs
    assert "b" not in datasets_of(jobs), jobs  # the other dataset is untouched
    assert "download" not in {rule for rule, _ in jobs}
    assert {"factorize", "embed_geneformer", "report"} <= {rule for rule, _ in jobs}
    assert sorted(jobs, key=repr) == sorted(expected, key=repr)


def test_a_moved_checkout_plans_nothing(finished_run, tmp_path):
    """Scripts, envs and the library are found from the workflow's own folder and no param holds a path
    of the checkout, so the same run under a copy of the workflow elsewhere is up to date."""
    import shutil

    tree, run = workflow_copy(finished_run, tmp_path)
    moved = tmp_path / "elsewhere" / "tissuelens"
    for part in ("workflow", "src"):
        shutil.copytree(tree / part, moved / part, ignore=shutil.ignore_patterns("__pycache__"))
    assert dry(moved, run) == []
    assert dry(moved, run, "--forcerun", "preprocess") != []  # the copy plans, and plans the same graph
