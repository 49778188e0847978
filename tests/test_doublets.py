"""Doublets: Scrublet ranks planted doublets (two cells' counts summed) high; preprocess.remove_doublets drops the
called ones on single-cell data only, and the analyze stage reuses its scores instead of scoring again; with a
section_key Scrublet scores each sample alone (scanpy's batch_key numbers)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from tissuelens.analyze.doublets import scrublet
from tissuelens.analyze.run import analyze
from tissuelens.config import step_defaults
from tissuelens.errors import InputError
from tissuelens.preprocess import preprocess

N_SINGLETS, N_DOUBLETS, N_GENES, N_TYPES = 600, 30, 300, 6


def planted_doublets(seed: int = 0) -> tuple[ad.AnnData, np.ndarray]:
    """Single cells of distinct types (Poisson counts around type profiles) plus doublets, each the summed counts
    of two cells of different types; returns (AnnData, True where a cell is a planted doublet)."""
    rng = np.random.default_rng(seed)
    profiles = rng.lognormal(mean=-1.0, sigma=1.5, size=(N_TYPES, N_GENES))
    types = rng.integers(N_TYPES, size=N_SINGLETS)
    depth = rng.lognormal(mean=np.log(1.0), sigma=0.3, size=(N_SINGLETS, 1))
    singlets = rng.poisson(profiles[types] * depth)
    first = rng.choice(N_SINGLETS, N_DOUBLETS, replace=False)
    second = np.array([rng.choice(np.flatnonzero(types != types[i])) for i in first])
    counts = np.vstack([singlets, singlets[first] + singlets[second]]).astype(np.int64)
    order = rng.permutation(len(counts))  # doublets are not at the end
    is_doublet = np.r_[np.zeros(N_SINGLETS, bool), np.ones(N_DOUBLETS, bool)][order]
    adata = ad.AnnData(counts[order].astype(np.float32),
                       obs=pd.DataFrame(index=[f"cell_{i:04d}" for i in range(len(counts))]),
                       var=pd.DataFrame(index=[f"GENE{j:03d}" for j in range(N_GENES)]))
    return adata, is_doublet


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(positive, scores))


@pytest.fixture(scope="module")
def planted():
    return planted_doublets()


def test_scrublet_ranks_planted_doublets_high(planted):
    adata, is_doublet = planted
    table = scrublet(adata.X, adata.obs_names, expected_rate=0.05, seed=0)
    assert list(table.index) == list(adata.obs_names) and table["doublet_score"].notna().all()
    scores = table["doublet_score"].to_numpy()
    assert auroc(scores, is_doublet) >= 0.9
    top = np.argsort(-scores, kind="stable")[:N_DOUBLETS]
    assert is_doublet[top].mean() >= 0.6  # most of the highest-scoring cells are the planted doublets
    called = table["predicted_doublet"].to_numpy()
    assert called.dtype == bool and called[is_doublet].mean() >= 0.5 and called[~is_doublet].mean() <= 0.05
    assert table.attrs["threshold"] is not None
    # same seed, same numbers
    again = scrublet(adata.X, adata.obs_names, expected_rate=0.05, seed=0)
    np.testing.assert_array_equal(again["doublet_score"].to_numpy(), scores)


def settings(remove: bool) -> dict:
    return {**step_defaults("preprocess"), "remove_doublets": remove, "n_top_genes": None}


def test_remove_doublets_drops_the_called_cells_on_single_cell_data(planted):
    adata, is_doublet = planted
    truth = pd.Series(is_doublet, index=adata.obs_names)
    kept, qc = preprocess(adata.copy(), {"spatial": False}, settings(True), "planted.h5ad", doublet_rate=0.05, seed=0)
    record = qc["doublets"]
    assert qc["cells_removed"]["doublets"] == record["n_called"] == adata.n_obs - kept.n_obs > 0
    assert record["n_cells"] == adata.n_obs and record["rate"] == pytest.approx(record["n_called"] / adata.n_obs)
    assert record["expected_rate"] == 0.05 and record["threshold"] > 0
    removed = truth.index.difference(kept.obs_names)
    assert truth[removed].mean() >= 0.8  # what was removed is mostly planted doublets ...
    assert truth[kept.obs_names].sum() <= N_DOUBLETS // 2  # ... and at most half of them are left
    assert (kept.obs["doublet_score"] < record["threshold"]).all() and kept.uns["doublets"]["n_called"] == record["n_called"]
    # off (the default): every cell stays
    off, qc_off = preprocess(adata.copy(), {"spatial": False}, settings(False), "planted.h5ad")
    assert off.n_obs == adata.n_obs and "doublets" not in qc_off and "doublets" not in qc_off["cells_removed"]


def test_remove_doublets_leaves_spatial_data_alone(planted):
    adata, _ = planted
    spatial = adata.copy()
    spatial.obsm["spatial"] = np.random.default_rng(0).uniform(size=(adata.n_obs, 2))
    kept, qc = preprocess(spatial, {"spatial": True}, settings(True), "planted.h5ad")
    assert kept.n_obs == adata.n_obs and "doublets" not in qc and "doublet_score" not in kept.obs


def test_analyze_reuses_the_scores_of_removed_doublets(planted):
    adata, _ = planted
    kept, qc = preprocess(adata.copy(), {"spatial": False}, settings(True), "planted.h5ad", doublet_rate=0.05, seed=0)
    domains = pd.DataFrame({"expr_leiden": pd.Categorical(["C1"] * kept.n_obs), "spatial_domain": None},
                           index=kept.obs_names)
    res = analyze(kept, domains, step_defaults("analyze"), spatial=False, seed=0, where="planted")
    dbl = res["doublets"]
    assert not dbl["predicted_doublet"].any()  # not called again among the cells kept
    np.testing.assert_array_equal(dbl["doublet_score"].to_numpy(), kept.obs["doublet_score"].to_numpy())
    assert res["summary"]["doublets"] == {"n_called": qc["doublets"]["n_called"], "rate": qc["doublets"]["rate"],
                                          "threshold": qc["doublets"]["threshold"], "removed": True}


def test_analyze_scores_doublets_when_they_are_kept(planted):
    adata, is_doublet = planted
    kept, _ = preprocess(adata.copy(), {"spatial": False}, settings(False), "planted.h5ad")
    domains = pd.DataFrame({"expr_leiden": pd.Categorical(["C1"] * kept.n_obs), "spatial_domain": None},
                           index=kept.obs_names)
    res = analyze(kept, domains, step_defaults("analyze"), spatial=False, seed=0, where="planted")
    dbl = res["doublets"]
    assert auroc(dbl["doublet_score"].to_numpy(), is_doublet) >= 0.9
    summary = res["summary"]["doublets"]
    assert summary["removed"] is False and summary["n_called"] == int(dbl["predicted_doublet"].sum()) > 0
    assert summary["rate"] == pytest.approx(summary["n_called"] / kept.n_obs)


def tiny_cells(tmp_path):
    """40 cells x 25 genes: too small for Scrublet's 30 principal components."""
    counts = np.random.default_rng(0).poisson(3.0, size=(40, 25)).astype(np.float32)
    adata = ad.AnnData(counts, obs=pd.DataFrame(index=[f"c{i}" for i in range(40)]),
                       var=pd.DataFrame(index=[f"G{j}" for j in range(25)]))
    path = tmp_path / "tiny.h5ad"
    adata.write_h5ad(path)
    return adata, path


def test_data_too_small_for_scrublet_is_one_error_line_and_no_output(tmp_path):
    import json

    from conftest import error_line, run_script

    _, raw = tiny_cells(tmp_path)
    out, qc = tmp_path / "out/preprocessed.h5ad", tmp_path / "out/qc.json"
    proc = run_script("preprocess", "--raw", raw, "--entry", json.dumps({"source": "local", "spatial": False}),
                      "--settings", json.dumps(settings(True)), "--doublet-rate", "0.05", "--seed", "0",
                      "--out", out, "--qc", qc)
    assert proc.returncode == 2
    assert error_line(proc).startswith(f"error: {raw} (preprocess.remove_doublets): Scrublet cannot score 40 cells x 25 genes (")
    assert not out.exists() and not qc.exists()


def test_analyze_without_doublet_scores_on_data_too_small(tmp_path):
    adata, _ = tiny_cells(tmp_path)
    kept, _ = preprocess(adata, {"spatial": False}, settings(False), "tiny.h5ad")
    domains = pd.DataFrame({"expr_leiden": pd.Categorical(["C1"] * kept.n_obs), "spatial_domain": None},
                           index=kept.obs_names)
    res = analyze(kept, domains, step_defaults("analyze"), spatial=False, seed=0, where="tiny.h5ad")
    assert res["doublets"].empty
    assert res["summary"]["doublets"]["skipped"].startswith("tiny.h5ad: Scrublet cannot score 40 cells x 25 genes")


@pytest.fixture(scope="module")
def two_sections():
    """Two samples of the planted data with different type profiles (seeds 0 and 1), in one AnnData whose obs
    column 'sample' names each cell's section; doublets are planted within each sample."""
    parts, truth = [], []
    for seed, name in ((0, "s1"), (1, "s2")):
        adata, is_doublet = planted_doublets(seed)
        adata.obs_names = [f"{name}_{c}" for c in adata.obs_names]
        adata.obs["sample"] = name
        parts.append(adata)
        truth.append(is_doublet)
    return ad.concat(parts), np.concatenate(truth)


def test_scrublet_per_section_never_mixes_sections(two_sections):
    import scanpy as sc

    adata, is_doublet = two_sections
    labels = adata.obs["sample"].to_numpy()
    table = scrublet(adata.X, adata.obs_names, expected_rate=0.05, seed=0, batches=labels)
    assert list(table.index) == list(adata.obs_names) and table["doublet_score"].notna().all()
    # each section scored as if it were alone: no simulated doublet pairs cells of two sections
    for name in ("s1", "s2"):
        rows = labels == name
        alone = scrublet(adata.X[rows], adata.obs_names[rows], expected_rate=0.05, seed=0)
        np.testing.assert_array_equal(table.loc[rows, "doublet_score"].to_numpy(), alone["doublet_score"].to_numpy())
        np.testing.assert_array_equal(table.loc[rows, "predicted_doublet"].to_numpy(), alone["predicted_doublet"].to_numpy())
        assert table.attrs["thresholds"][name] == alone.attrs["threshold"]
    assert table.attrs["threshold"] is None and set(table.attrs["thresholds"]) == {"s1", "s2"}
    # the same numbers as scanpy's own batch_key
    holder = ad.AnnData(adata.X.astype(np.float32), obs=pd.DataFrame({"sample": labels}, index=adata.obs_names))
    sc.pp.scrublet(holder, batch_key="sample", expected_doublet_rate=0.05, random_state=0, verbose=False)
    np.testing.assert_array_equal(table["doublet_score"].to_numpy(), holder.obs["doublet_score"].to_numpy(np.float64))
    # pooled, the sections' doublets are simulated across samples: other scores
    pooled = scrublet(adata.X, adata.obs_names, expected_rate=0.05, seed=0)
    assert not np.allclose(pooled["doublet_score"].to_numpy(), table["doublet_score"].to_numpy())
    assert auroc(table["doublet_score"].to_numpy(), is_doublet) >= 0.9
    # a cell Scrublet filters out (2 genes) keeps its row with a NaN score (scanpy's batch_key raises a KeyError)
    sparse = adata.X.copy()
    sparse[0] = 0
    sparse[0, :2] = 1
    table = scrublet(sparse, adata.obs_names, expected_rate=0.05, seed=0, batches=labels)
    assert np.isnan(table["doublet_score"].iloc[0]) and not table["predicted_doublet"].iloc[0]
    assert table["doublet_score"].iloc[1:].notna().all()


def test_preprocess_and_analyze_run_scrublet_per_section(two_sections):
    adata, _ = two_sections
    entry = {"spatial": False, "section_key": "sample"}
    kept, qc = preprocess(adata.copy(), entry, settings(True), "two.h5ad", doublet_rate=0.05, seed=0)
    labels = adata.obs["sample"].to_numpy()
    direct = scrublet(adata.X, adata.obs_names, expected_rate=0.05, seed=0, batches=labels)
    assert qc["doublets"]["n_called"] == int(direct["predicted_doublet"].sum()) > 0
    assert qc["doublets"]["thresholds"] == direct.attrs["thresholds"] and qc["doublets"]["threshold"] is None
    off, _ = preprocess(adata.copy(), entry, settings(False), "two.h5ad")
    domains = pd.DataFrame({"expr_leiden": pd.Categorical(["C1"] * off.n_obs), "spatial_domain": None},
                           index=off.obs_names)
    res = analyze(off, domains, step_defaults("analyze"), spatial=False, seed=0, where="two", section_key="sample")
    np.testing.assert_array_equal(res["doublets"]["doublet_score"].to_numpy(),
                                  direct["doublet_score"].reindex(off.obs_names).to_numpy())
    assert set(res["summary"]["doublets"]["thresholds"]) == {"s1", "s2"}
    with pytest.raises(InputError, match="two: section_key 'batch' is not an obs column"):
        analyze(off, domains, step_defaults("analyze"), spatial=False, seed=0, where="two", section_key="batch")
