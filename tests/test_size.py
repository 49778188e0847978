"""Every stage on a dataset above the libraries' size thresholds (tests/configs/size.yaml: 6,000 spots x 1,000
genes), to the report: scanpy's kNN switch at 4,096 cells (embedding metrics, Loki's quality block, report
UMAP/Leiden), factorize minibatches and analysis chunks, the synthetic H&E growing with the spots, SAE memmap
streaming. Before tissuelens.neighbors, scanpy's approximate kNN path crashed here and no report was built."""

from __future__ import annotations

import json

import anndata as ad
import pandas as pd
import pytest
from helpers.configs import size_config, write_config
from helpers.workflow import snakemake

from tissuelens.datasets.synthetic import auto_image_size

pytestmark = [pytest.mark.workflow, pytest.mark.size]
VARIANTS = ["pnmf", "svgp", "mggp_svgp", "lcgp", "mggp_lcgp"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("size")
    write_config(workdir, size_config())
    snakemake(workdir, "--cores", "2", timeout=1800)
    return workdir


def test_report_and_every_stage_built(run):
    res = run / "results" / "big"
    html = (res / "report" / "index.html").read_text()
    for section in ("dataset", "analyze", "factorize", "embed", "sae", "narrative", "provenance"):
        assert f'<section id="{section}"' in html
    assert set(pd.read_csv(res / "factorize" / "comparison.csv")["variant"]) == set(VARIANTS)
    for model in ("geneformer", "loki_tiny"):
        assert len(pd.read_parquet(res / "sae" / model / "features.parquet")) > 0


def test_neighbour_graphs_above_scanpys_switch(run):
    n = ad.read_h5ad(run / "results" / "big" / "preprocessed.h5ad", backed="r").n_obs
    assert n > 4096
    gf = json.loads((run / "results" / "big" / "embed" / "geneformer" / "embedding_metrics.json").read_text())
    assert gf["labels"]["n_cells"] == n and gf["labels"]["leiden_n_clusters"] >= 2
    assert 0 <= gf["labels"]["leiden_nmi"] <= 1 and 0 <= gf["labels"]["knn_accuracy"] <= 1
    loki = json.loads((run / "results" / "big" / "embed" / "loki_tiny" / "metrics.json").read_text())
    for key in ("X_loki_text", "X_loki_image"):
        assert loki["quality"][key]["labels"]["n_cells"] == n and "leiden_nmi" in loki["quality"][key]["labels"]


def test_image_grows_with_the_spots_and_patches_fit_the_model(run):
    raw = ad.read_h5ad(run / "resources" / "datasets" / "big" / "raw.h5ad")
    hires = raw.uns["spatial"]["big"]["images"]["hires"]
    assert hires.shape[:2] == (auto_image_size(6000),) * 2 == (1560, 1560)
    image = json.loads((run / "results" / "big" / "embed" / "loki_tiny" / "metrics.json").read_text())["image"]
    assert image["patch_px"] == 20 and image["padded_spots"] >= 0


def test_long_jobs_log_progress_lines(run):
    logs = run / "logs" / "big"
    assert "factorize svgp: 30/30 it (100%)" in (logs / "factorize" / "svgp.log").read_text()
    assert "analyze mggp_svgp: 5/5 steps (100%)" in (logs / "analyze_factors" / "mggp_svgp.log").read_text()
    text = (logs / "embed" / "geneformer.log").read_text()
    assert "Geneformer: " in text and " cells (100%)" in text
    loki = (logs / "embed" / "loki_tiny.log").read_text()
    assert "Loki text: 6,000/6,000 spots (100%)" in loki and "Loki image: 6,000/6,000 spots (100%)" in loki
