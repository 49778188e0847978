"""A Visium HD section (16 µm bins, the smallest valid Space Ranger outs/ folder, written here) through the
whole workflow to the report: download via spatialdata-io, preprocess, Loki (text and H&E
patches) embeddings, SAE, an SVGP factorisation, report. Tiny models and sizes (tests/configs/scaleout.yaml)."""

from __future__ import annotations

import json

import anndata as ad
import pandas as pd
import pytest
from helpers.platforms import write_visium_hd_folder
from helpers.configs import scaleout_config, write_config
from helpers.workflow import snakemake

pytestmark = pytest.mark.workflow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hd_run")
    outs = workdir / "data" / "outs"
    write_visium_hd_folder(outs, grid=15, n_genes=40, bin_sizes=(8, 16))
    config = scaleout_config(("hd",))
    config["datasets"]["hd"] = {"source": "visium_hd", "spatial": True, "path": "data/outs", "bin_size": 16}
    # Loki alone (text and H&E patches: the image path); Geneformer's stages are the same as for any source
    config["embed"]["models"] = ["loki_tiny"]
    config["models"].pop("geneformer")
    config["factorize"]["variants"] = ["svgp"]
    write_config(workdir, config)
    snakemake(workdir, "--cores", "2", timeout=900)
    return workdir


def test_visium_hd_section_reaches_the_report(run):
    res = run / "results" / "hd"
    raw = ad.read_h5ad(run / "resources" / "datasets" / "hd" / "raw.h5ad")
    assert raw.n_obs == 225 and raw.uns["spatial"]["hd"]["scalefactors"]["bin_size_um"] == 16
    html = (res / "report" / "index.html").read_text()
    for section in ("dataset", "factorize", "embed", "sae"):
        assert f'<section id="{section}"' in html
    assert set(pd.read_csv(res / "factorize" / "comparison.csv")["variant"]) == {"svgp"}
    assert (res / "sae" / "loki_tiny" / "sae" / "cfg.json").exists()
    loki = json.loads((res / "embed" / "loki_tiny" / "metrics.json").read_text())
    # the H&E patches came from the Visium HD hires image: 32 px bins x 0.1 = 3.2 px, widened to the ViT patch
    assert loki["image"]["spot_px"] == pytest.approx(3.2, abs=0.5)
    emb = ad.read_h5ad(res / "embed" / "loki_tiny" / "embeddings.h5ad")
    assert emb.obsm["X_loki_image"].shape[0] == ad.read_h5ad(res / "preprocessed.h5ad").n_obs
