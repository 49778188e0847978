"""The demo without labels: domains supply obs["group"] (analyze.group_source), the MGGP variants and the
report run on them, the planted markers annotate the true groups, and reruns stay minimal. The run is
conftest's `unlabelled_demo`, shared with tests/test_demo_unlabelled.py."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers.configs import demo_config, write_config
from helpers.workflow import copy_run, plan, snakemake

pytestmark = pytest.mark.workflow


def unlabelled_demo_config() -> dict:
    """The config of conftest's `unlabelled_demo` run: the demo without group_key, every stage, tiny."""
    return demo_config(labels=False, every_stage=True)


@pytest.fixture(scope="module")
def unlabelled(unlabelled_demo):
    return unlabelled_demo


def test_domains_supply_the_groups_and_the_mggp_variant_runs(unlabelled):
    import anndata as ad

    qc = json.loads((unlabelled / "results/demo/qc.json").read_text())
    assert qc["group_source"] == "spatial_domain"
    adata = ad.read_h5ad(unlabelled / "results/demo/preprocessed.h5ad")
    domains = pd.read_parquet(unlabelled / "results/demo/analyze/domains.parquet")
    assert set(domains.columns) == {"expr_leiden", "spatial_domain"}
    groups = adata.obs["group"].astype(str)
    assert groups.str.match(r"^D\d+$").all() and groups.nunique() >= 2
    assert (groups == domains.loc[adata.obs_names, "spatial_domain"].astype(str)).all()
    metrics = json.loads((unlabelled / "results/demo/factorize/mggp_svgp/metrics.json").read_text())
    assert metrics["variant"] == "mggp_svgp"
    html = (unlabelled / "results/demo/report/index.html").read_text()
    assert "Cell groups are the spatial domains below (analyze.group_source: spatial_domain)" in html
    assert "<h2>Domains and annotation</h2>" in html and "Cross-stage agreement" in html


def test_planted_markers_annotate_the_true_groups(unlabelled):
    import anndata as ad

    raw = ad.read_h5ad(unlabelled / "resources/datasets/demo/raw.h5ad")
    table = pd.read_parquet(unlabelled / "results/demo/analyze/annotation.parquet")
    truth = raw.obs.loc[table.index, "group"].astype(str)
    called = table["cell_type"].astype(str) != "unassigned"  # best type not significant (analyze.markers.alpha)
    accuracy = (table["cell_type"].astype(str)[called] == truth[called]).mean()
    assert accuracy >= 0.95 and called.mean() >= 0.5, (accuracy, called.mean())
    assert table["confidence"].between(0, 1).all() and (table["margin"] >= 0).all()
    summary = json.loads((unlabelled / "results/demo/analyze/summary.json").read_text())
    assert summary["group_source"] == "spatial_domain" and summary["moran"]["top_I"] > 0.2
    nhood = pd.read_csv(unlabelled / "results/demo/analyze/nhood_enrichment.csv")
    assert set(nhood["key"]) == {"spatial_domain", "cell_type"}
    agreement = pd.read_csv(unlabelled / "results/demo/analyze/agreement.csv")
    names = set(agreement["a"]) | set(agreement["b"])
    assert {"expr_leiden", "spatial_domain"} <= names and any(n.startswith("factors_") for n in names)
    assert "labels" not in names  # the groups are the domains themselves


def test_reruns_stay_minimal(unlabelled, tmp_path):
    run = copy_run(unlabelled, tmp_path / "run")
    assert plan(run) == []
    config = unlabelled_demo_config()
    config["analyze"]["markers"] = {**config["analyze"]["markers"], "min_markers": 4}
    write_config(run, config)
    assert {rule for rule, _ in plan(run)} == {"analyze", "narrative", "report"}
    config["analyze"]["domains"]["n_hops"] = 2  # the groups change: everything on them reruns
    write_config(run, config)
    rules = {rule for rule, _ in plan(run)}
    assert {"domains", "preprocess", "factorize", "analyze", "agreement", "report"} <= rules, rules
    assert "download" not in rules


def test_labelled_dataset_keeps_its_labels_and_domain_settings_do_not_touch_preprocess(unlabelled, tmp_path):
    config = unlabelled_demo_config()
    config["datasets"]["demo"]["group_key"] = "group"
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, config)
    rules = {rule for rule, _ in plan(run, "results/demo/preprocessed.h5ad")}
    assert rules == {"download", "preprocess"}  # no domains job before preprocess when labels exist
    config["datasets"]["demo"]["analyze"] = {"group_source": "expr_leiden"}
    write_config(run, config)
    proc = snakemake(run, "-n", check=False)
    assert proc.returncode != 0
    assert "datasets.demo: analyze.group_source 'expr_leiden' is set together with group_key 'group'" in proc.stderr + proc.stdout


def single_cell_config(remove: bool) -> dict:
    """A non-spatial local dataset (planted doublets, no labels) alone: domains, preprocess, analyze, report."""
    config = demo_config(labels=False)
    config["analyze"] = {**config["analyze"], "domains": {"n_neighbors": 10, "spatial_resolution": 0.5},
                         "spatial_stats": {"n_perms": 50}}
    config["datasets"] = {"cells": {"source": "local", "path": "cells.h5ad", "spatial": False}}
    config["preprocess"] = {**config["preprocess"], "remove_doublets": remove}
    config["factorize"] = {**config["factorize"], "enabled": False}
    config["analyze"]["markers"] = {"path": None}
    return config


@pytest.fixture(scope="module")
def single_cell(tmp_path_factory):
    from test_doublets import planted_doublets

    work = tmp_path_factory.mktemp("cells")
    adata, is_doublet = planted_doublets()
    adata.write_h5ad(work / "cells.h5ad")
    write_config(work, single_cell_config(remove=True))
    snakemake(work)
    return work, pd.Series(is_doublet, index=adata.obs_names)


def test_single_cell_doublets_are_removed_and_reported(single_cell, tmp_path):
    import anndata as ad

    work, truth = single_cell
    qc = json.loads((work / "results/cells/qc.json").read_text())
    assert qc["group_source"] == "expr_leiden" and qc["cells_removed"]["doublets"] == qc["doublets"]["n_called"] > 0
    kept = ad.read_h5ad(work / "results/cells/preprocessed.h5ad").obs_names
    assert truth[truth.index.difference(kept)].mean() >= 0.8  # the removed cells are the planted doublets
    domains = pd.read_parquet(work / "results/cells/analyze/domains.parquet")
    # domains saw the same cells after the doublet filter (preprocess may drop a few more: tiny Leiden groups)
    assert set(kept) <= set(domains.index) and len(domains) == qc["doublets"]["n_cells"] - qc["doublets"]["n_called"]
    doublets = pd.read_parquet(work / "results/cells/analyze/doublets.parquet")
    assert not doublets["predicted_doublet"].any()  # analyze did not call new doublets among those kept
    html = (work / "results/cells/report/index.html").read_text()
    assert "Cell groups are the expression clusters (Leiden) below (analyze.group_source: expr_leiden)" in html
    assert f"Scrublet called <b>{qc['doublets']['n_called']:,}</b> of {len(truth):,} cells doublets" in html
    assert "preprocess removed them" in html
    narrative = json.loads((work / "results/cells/report/narrative.json").read_text())
    assert f"- Doublets (Scrublet): rate {100 * qc['doublets']['rate']:.2f}% of cells, removed before analysis." in narrative["prompt"]

    # the expected rate reruns domains and preprocess only while doublets are removed ...
    run = copy_run(work, tmp_path / "run")
    config = single_cell_config(remove=True)
    config["analyze"]["doublets"] = {"expected_rate": 0.08}
    write_config(run, config)
    assert {"domains", "preprocess", "analyze", "agreement", "report"} <= {rule for rule, _ in plan(run)}
    # ... and turning removal off reruns them too
    write_config(run, single_cell_config(remove=False))
    assert {"domains", "preprocess", "analyze"} <= {rule for rule, _ in plan(run)}
