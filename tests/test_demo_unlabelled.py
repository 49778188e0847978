"""The demo without labels, end to end: a copy of config/config.yaml with `group_key` removed, so the
groups are the spatial domains (analyze.group_source), shrunk to tiny models and a few hundred spots
(helpers.configs.demo_config(labels=False, every_stage=True); the run is conftest's `unlabelled_demo`,
shared with tests/test_analyze_workflow.py).

One run builds every stage the demo builds: the five PNMF-GP variants (the mggp_ ones group by domain),
the SAE with its group AUROCs, Geneformer and the tiny random Loki/OmiCLIP CoCa with its four tasks
(annotate, retrieve, predex, decompose), the embedding metrics and the report.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from helpers.configs import LOKI, VARIANTS

pytestmark = pytest.mark.workflow
N_SPOTS = 200  # demo_config(every_stage=True)


@pytest.fixture(scope="module")
def demo(unlabelled_demo):
    return unlabelled_demo / "results" / "demo"


def test_groups_are_the_spatial_domains(demo):
    import anndata as ad

    domains = pd.read_parquet(demo / "analyze/domains.parquet")
    qc = json.loads((demo / "qc.json").read_text())
    assert qc["group_source"] == "spatial_domain"
    obs = ad.read_h5ad(demo / "preprocessed.h5ad", backed="r").obs
    assert len(obs) == len(domains) == N_SPOTS
    assert (obs["group"].astype(str) == domains.loc[obs.index, "spatial_domain"].astype(str)).all()
    assert domains["spatial_domain"].nunique() >= 2


def test_all_five_variants_ran_on_the_domain_groups(demo):
    domains = set(pd.read_parquet(demo / "analyze/domains.parquet")["spatial_domain"].astype(str))
    for variant in VARIANTS:
        metrics = json.loads((demo / "factorize" / variant / "metrics.json").read_text())
        assert metrics["variant"] == variant and metrics["iterations"] == 20 and metrics["n_cells"] == N_SPOTS
        assert np.isfinite(metrics["final_elbo"])
        assert set(metrics["reconstruction_error_by_group"]) == domains, variant
    for variant in ("mggp_svgp", "mggp_lcgp"):  # one set of inducing points per domain
        assert (demo / "factorize" / variant / "model/groupsZ.npy").is_file()
    comparison = pd.read_csv(demo / "factorize/comparison.csv")
    assert set(comparison.iloc[:, 0].astype(str)) == set(VARIANTS)


def test_sae_group_auroc_is_per_domain(demo):
    domains = set(pd.read_parquet(demo / "analyze/domains.parquet")["spatial_domain"].astype(str))
    for model in ("geneformer", LOKI):
        groups = pd.read_parquet(demo / "sae" / model / "feature_groups.parquet")
        assert set(groups["group"].astype(str)) == domains, model
        auroc = groups["auroc"].dropna()
        assert len(auroc) and auroc.between(0, 1).all()
        features = pd.read_parquet(demo / "sae" / model / "features.parquet")
        ranked = features[features["top_group"] != ""]
        assert len(ranked) and set(ranked["top_group"]) <= domains
        assert ranked["top_group_auroc"].between(0, 1).all()


def test_embedding_label_metrics_use_the_domains(demo):
    n_domains = pd.read_parquet(demo / "analyze/domains.parquet")["spatial_domain"].nunique()
    for model in ("geneformer", LOKI):
        metrics = json.loads((demo / "embed" / model / "embedding_metrics.json").read_text())
        labels = metrics["labels"]
        assert metrics["label_key"] == "group" and labels["n_groups"] == n_domains and labels["n_cells"] == N_SPOTS
        assert 0 <= labels["knn_accuracy"] <= 1 and -1 <= labels["leiden_ari"] <= 1 and 0 <= labels["leiden_nmi"] <= 1
    quality = json.loads((demo / "embed" / LOKI / "metrics.json").read_text())["quality"]
    for key in ("X_loki_text", "X_loki_image"):
        assert quality[key]["labels"]["n_groups"] == n_domains, key


def test_loki_annotate(demo):
    table = pd.read_parquet(demo / "loki" / LOKI / "annotation.parquet")
    summary = json.loads((demo / "loki" / LOKI / "annotation.json").read_text())
    types = summary["cell_types"]  # the demo's marker file: one sentence per planted group
    assert types == ["domain_1", "domain_2", "domain_3", "domain_4"]
    assert len(table) == N_SPOTS and table["obs_name"].is_unique
    for src in ("image", "text"):
        assert set(table[f"{src}_cell_type"]) <= set(types)
        assert table[f"{src}_entropy"].between(0, 1).all()
        assert sum(summary[src]["counts"].values()) == N_SPOTS
        assert sum(sum(c.values()) for c in summary[src]["by_group"].values()) == N_SPOTS  # by domain


def test_loki_retrieve(demo):
    summary = json.loads((demo / "loki" / LOKI / "retrieval.json").read_text())
    table = pd.read_parquet(demo / "loki" / LOKI / "retrieval.parquet")
    k = summary["k"]
    assert summary["n_query"] == N_SPOTS and len(table) == N_SPOTS * k
    assert sorted(table["rank"].unique()) == list(range(1, k + 1))
    for key in ("self_at_1", "self_at_k", "label_at_1", "label_precision_at_k", "label_chance", "self_chance"):
        assert 0 <= summary[key] <= 1, key
    assert summary["self_at_1"] <= summary["self_at_k"]
    assert summary["self_at_k"] == pytest.approx(table.groupby("spot")["same_spot"].any().mean())


def test_loki_predex(demo):
    summary = json.loads((demo / "loki" / LOKI / "predex.json").read_text())
    genes = pd.read_csv(demo / "loki" / LOKI / "predex_genes.csv")
    spots = pd.read_parquet(demo / "loki" / LOKI / "predex_spots.parquet")
    assert summary["n_train"] + summary["n_test"] == N_SPOTS and summary["n_test"] > 0
    assert len(genes) == summary["genes_scored"] > 0 and genes["gene"].is_unique
    assert genes["pearson"].dropna().between(-1, 1).all()
    assert set(spots["gene"]) <= set(genes["gene"]) and spots[["measured", "predicted"]].notna().all().all()


def test_loki_decompose(demo):
    summary = json.loads((demo / "loki" / LOKI / "decompose.json").read_text())
    table = pd.read_parquet(demo / "loki" / LOKI / "decompose.parquet")
    domains = sorted(pd.read_parquet(demo / "analyze/domains.parquet")["spatial_domain"].astype(str).unique())
    # the demo maps its own spots back, labelled by their groups: here the domains
    assert summary["reference"] == "demo" and sorted(summary["cell_types"]) == domains
    assert len(table) == N_SPOTS
    proportions = table[summary["cell_types"]].to_numpy()
    assert (proportions >= 0).all()
    np.testing.assert_allclose(proportions.sum(axis=1), 1.0, atol=1e-5)
    assert set(table["dominant"]) <= set(domains)


def test_report_says_domains_and_shows_every_stage(demo):
    html = (demo / "report/index.html").read_text()
    assert ("Cell groups are the spatial domains below (analyze.group_source: spatial_domain): the dataset "
            "has no labels (group_key), so every group-based result in this report uses these domains.") in html.replace("&#x27;", "'")
    assert 'data-status="skipped"' not in html and "was not run for this dataset" not in html
    for heading in ("Model comparison", "SAE on geneformer", f"SAE on {LOKI}", "Text-image agreement (Loki)",
                    f"Zero-shot annotation from marker sentences ({LOKI})", f"Image to transcriptome retrieval ({LOKI})",
                    f"Expression predicted from the image: PredEx ({LOKI})", f"Cell-type decomposition: Tangram ({LOKI})"):
        assert f"<h3>{heading}</h3>" in html, heading
    for figure in (f"Loki zero-shot annotation maps ({LOKI})", f"Tangram cell-type proportions per spot ({LOKI})",
                   f"PredEx: measured and predicted expression of the best-predicted genes ({LOKI})"):
        assert re.search(rf'<img [^>]*alt="{re.escape(figure)}"', html), figure
    assert "retrieval skipped" not in html and "PredEx skipped" not in html and "no Tangram decomposition" not in html
    assert re.search(r"<h3>Spatial domains: \d+</h3>", html)
