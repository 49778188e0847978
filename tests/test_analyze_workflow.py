"""The demo without labels: domains supply obs["group"] (analyze.group_source), the MGGP variants and the
report run on them, the planted markers annotate the true groups, and reruns stay minimal."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from conftest import REPO, run_snakemake
from scaleout import copy_run, plan, write_config

pytestmark = pytest.mark.workflow


def unlabelled_demo_config() -> dict:
    """The repo's demo config without group_key, shrunk: 150 spots, pnmf and mggp_svgp briefly, no models."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    demo = config["datasets"]["demo"]
    del demo["group_key"]
    demo["synthetic"] = {**demo["synthetic"], "n_spots": 150, "n_genes": 40, "image_size": 96}
    config["factorize"] = {**config["factorize"], "variants": ["pnmf", "mggp_svgp"], "n_factors": 3, "max_iter": 30,
                           "checkpoint_every": 0, "device": "cpu", "n_inducing": 30}
    config["embed"] = {**config["embed"], "models": []}
    config["sae"] = {**config["sae"], "enabled": False}
    config["analyze"] = {**config["analyze"], "domains": {"n_neighbors": 10, "spatial_resolution": 0.5},
                         "spatial_stats": {"n_perms": 50}}
    return config


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    work = tmp_path_factory.mktemp("unlabelled")
    write_config(work, unlabelled_demo_config())
    run_snakemake(work)
    return work


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
    assert (unlabelled / "results/demo/report/index.html").is_file()


def test_planted_markers_annotate_the_true_groups(unlabelled):
    import anndata as ad

    raw = ad.read_h5ad(unlabelled / "resources/datasets/demo/raw.h5ad")
    table = pd.read_parquet(unlabelled / "results/demo/analyze/annotation.parquet")
    truth = raw.obs.loc[table.index, "group"].astype(str)
    accuracy = (table["cell_type"].astype(str) == truth).mean()
    assert accuracy >= 0.9, accuracy
    assert table["entropy"].between(0, 1).all()
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
    config["analyze"]["domains"]["spatial_resolution"] = 0.4  # the groups change: everything on them reruns
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
    proc = run_snakemake(run, "-n", check=False)
    assert proc.returncode != 0
    assert "datasets.demo: analyze.group_source 'expr_leiden' is set together with group_key 'group'" in proc.stderr + proc.stdout
