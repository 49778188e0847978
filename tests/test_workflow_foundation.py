"""Snakemake runs of download -> preprocess in temporary directories, as a user runs them."""

from __future__ import annotations

import json

import anndata as ad
import pytest
from helpers.configs import write_config
from helpers.workflow import snakemake

pytestmark = pytest.mark.workflow

TINY = {"n_spots": 120, "n_genes": 40, "image_size": 64}


def two_datasets():
    return {
        "datasets": {
            "a": {"source": "synthetic", "spatial": True, "group_key": "group", "synthetic": TINY},
            "b": {"source": "synthetic", "spatial": True, "seed": 3, "synthetic": TINY},
        },
        "preprocess": {"n_top_genes": 20},
    }


def test_bad_config_stops_before_any_job(tmp_path):
    config = two_datasets()
    config["datasets"]["b"]["group_kee"] = "group"
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "-n", "results/a/preprocessed.h5ad", check=False)
    assert proc.returncode != 0
    assert "datasets.b: unknown key 'group_kee'" in proc.stdout + proc.stderr
    assert not (tmp_path / "resources").exists() and not (tmp_path / "results").exists()


def test_one_dataset_builds_alone_and_a_rerun_plans_nothing(tmp_path):
    write_config(tmp_path, two_datasets())
    snakemake(tmp_path, "results/a/preprocessed.h5ad")
    adata = ad.read_h5ad(tmp_path / "results/a/preprocessed.h5ad")
    assert adata.n_obs == 120 and adata.var["highly_variable"].sum() == 20
    assert adata.obs["group"].dtype.name == "category"
    assert json.loads((tmp_path / "results/a/qc.json").read_text())["n_cells"] == 120
    assert (tmp_path / "logs/a/preprocess.log").exists() and (tmp_path / "benchmarks/a/preprocess.tsv").exists()
    assert not (tmp_path / "resources/datasets/b").exists()  # the other dataset was not touched

    dry = snakemake(tmp_path, "-n", "results/a/preprocessed.h5ad")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def test_failed_job_leaves_no_output(tmp_path):
    config = two_datasets()
    config["datasets"]["a"]["preprocess"] = {"min_counts": 10**9}
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "results/a/preprocessed.h5ad", check=False)
    assert proc.returncode != 0
    log = (tmp_path / "logs/a/preprocess.log").read_text()
    assert "error: resources/datasets/a/raw.h5ad: filters removed every cell" in log
    assert not (tmp_path / "results/a/preprocessed.h5ad").exists()
    assert not (tmp_path / "results/a/qc.json").exists()
