"""Sections and platform geometry: one spatial graph per section, following the platform, used by every step.

Two synthetic sections on the same grid (identical coordinates) with different patterns: nothing spatial may
link them, and each section's statistics must equal those of the section run alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from tissuelens.config import step_defaults
from tissuelens.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def _section(pattern: str, seed: int, name: str, n_spots: int = 400):
    from tissuelens.datasets.synthetic import make_synthetic

    a = make_synthetic(n_spots=n_spots, n_genes=60, n_spatial_factors=3, seed=seed, pattern=pattern)
    a.obs_names = [f"{name}_{i}" for i in a.obs_names]
    a.obs["slice"] = name
    del a.uns["spatial"], a.obsm["true_factors"], a.varm["true_loadings"]
    return a


def two_sections():
    """Sections 'A' (blocks) and 'B' (quilt, another seed) on one 20 x 20 grid: every coordinate is shared."""
    a, b = _section("blocks", 0, "A"), _section("quilt", 1, "B")
    assert np.array_equal(a.obsm["spatial"], b.obsm["spatial"])
    both = ad.concat([a, b], merge="same")
    both.obsm["spatial"] = np.vstack([a.obsm["spatial"], b.obsm["spatial"]])
    return both, a, b


def _preprocess(raw, entry: dict):
    from tissuelens.preprocess import preprocess

    settings = {**step_defaults("preprocess"), "n_top_genes": None, "min_counts": 1, "min_genes": 1, "min_cells": 0}
    adata, report = preprocess(raw.copy(), {"source": "synthetic", "spatial": True, **entry}, settings, "two.h5ad")
    return adata, report


@pytest.fixture(scope="module")
def prepared():
    both, a, b = two_sections()
    joint, report = _preprocess(both, {"section_key": "slice"})
    alone = {"A": _preprocess(a, {})[0], "B": _preprocess(b, {})[0]}
    return joint, report, alone


def test_graph_has_no_cross_section_edge_and_each_block_is_the_section_alone(prepared):
    joint, report, alone = prepared
    assert report["spatial_graph"]["sections"] == ["A", "B"]
    assert joint.uns["spatial_graph"]["section_key"] == "slice"
    graph = sp.coo_matrix(joint.obsp["spatial_connectivities"])
    section = joint.obs["slice"].astype(str).to_numpy()
    assert graph.nnz > 0 and (section[graph.row] != section[graph.col]).sum() == 0
    for name, single in alone.items():
        rows = np.flatnonzero(section == name)
        block = sp.csr_matrix(joint.obsp["spatial_connectivities"])[rows][:, rows]
        assert (block != sp.csr_matrix(single.obsp["spatial_connectivities"])).nnz == 0


def test_without_section_key_the_overlapping_sections_are_linked():
    """What this change fixes: the same data without section_key joins spots of A and B (same coordinates)."""
    both, _, _ = two_sections()
    joint, _ = _preprocess(both, {})
    graph = sp.coo_matrix(joint.obsp["spatial_connectivities"])
    section = joint.obs["slice"].astype(str).to_numpy()
    assert (section[graph.row] != section[graph.col]).sum() > 0


def test_smoothing_and_morans_i_per_section_equal_each_section_alone(prepared):
    from tissuelens.analyze import domains, spatial_stats
    from tissuelens.spatial_graph import spatial_connectivities

    joint, _, alone = prepared
    x = np.asarray(joint.X.todense())
    smoothed = domains.smooth(x, spatial_connectivities(joint, "joint"))
    svg = spatial_stats.moran_genes(joint, top=60, seed=0)
    assert list(svg["section"].unique()) == ["A", "B"]
    section = joint.obs["slice"].astype(str).to_numpy()
    for name, single in alone.items():
        rows = np.flatnonzero(section == name)
        own = domains.smooth(np.asarray(single.X.todense()), spatial_connectivities(single, name))
        np.testing.assert_allclose(smoothed[rows], own, rtol=1e-12)
        mine = svg[svg["section"] == name].set_index("gene")["I"]
        ref = spatial_stats.moran_genes(single, top=60, seed=0)
        assert list(ref["section"].unique()) == ["all"]
        ref = ref.set_index("gene")["I"]
        np.testing.assert_allclose(mine.loc[ref.index].to_numpy(), ref.to_numpy(), rtol=1e-6)
    # the two sections' patterns differ: their top genes are not the same list
    top = svg.groupby("section")["gene"].apply(lambda g: list(g.head(5)))
    assert top["A"] != top["B"]


def test_spatial_domains_read_the_recorded_graph(prepared):
    """compute_domains smooths over the recorded (per-section) graph; a file without one fails plainly."""
    from tissuelens.analyze.domains import compute_domains

    joint, _, _ = prepared
    s = step_defaults("analyze")["domains"]
    out, _ = compute_domains(joint.copy(), s, True, 0, "joint")
    assert out["spatial_domain"].notna().all() and out["spatial_domain"].nunique() >= 2
    bare = joint.copy()
    del bare.obsp["spatial_connectivities"], bare.uns["spatial_graph"]
    with pytest.raises(InputError, match=r"old.h5ad: no recorded spatial graph .* rerun preprocess"):
        compute_domains(bare, s, True, 0, "old.h5ad")


def test_analyze_statistics_per_section(prepared):
    from tissuelens.analyze.run import moran_summary, run_spatial_stats

    joint, _, _ = prepared
    adata = joint.copy()
    adata.obs["dom"] = np.where(adata.obs_names.str.endswith("1"), "x", "y")
    s = {"spatial_stats": {**step_defaults("analyze")["spatial_stats"], "n_perms": 20, "moran_top": 5,
                           "co_occurrence_intervals": 4}}
    stats = run_spatial_stats(adata, ["dom"], s, 0)
    assert set(stats["cooccurrence"]["section"]) == {"A", "B"}
    assert stats["svg"].groupby("section").size().to_dict() == {"A": 5, "B": 5}
    summary = moran_summary(stats["svg"])
    assert set(summary["per_section"]) == {"A", "B"} and summary["n_genes_tested"] == 60
    # every gene of 60 carries a planted spatial pattern in at least one section: more than moran_top significant
    assert summary["n_significant_fdr_0.05"] > 5


def test_bad_section_key_is_one_error_line(tmp_path):
    both, _, _ = two_sections()
    raw = tmp_path / "raw.h5ad"
    both.write_h5ad(raw)
    entry = json.dumps({"source": "synthetic", "spatial": True, "section_key": "region"})
    settings = json.dumps(step_defaults("preprocess"))
    proc = subprocess.run([sys.executable, str(ROOT / "workflow" / "scripts" / "preprocess.py"), "--raw", str(raw), "--entry", entry,
                           "--settings", settings, "--out", str(tmp_path / "p.h5ad"), "--qc", str(tmp_path / "qc.json")],
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert lines == [f"error: {raw}: section_key 'region' is not an obs column (has: in_tissue, array_row, array_col, "
                     "group, slice)"]
    assert not (tmp_path / "p.h5ad").exists()


def test_missing_section_values_are_rejected():
    from tissuelens.sections import section_labels_from

    obs = pd.DataFrame({"slice": ["a", None, "b"]}, index=["c1", "c2", "c3"])
    with pytest.raises(InputError, match=r"x.h5ad: section_key 'slice' is missing for 1 cells \(e.g. 'c2'\)"):
        section_labels_from(obs, "slice", "x.h5ad")


def test_recorded_graph_survives_h5ad(prepared, tmp_path):
    from tissuelens.io import read_h5ad, to_h5ad
    from tissuelens.sections import section_labels

    joint, _, alone = prepared
    to_h5ad(joint, tmp_path / "j.h5ad")
    to_h5ad(alone["A"], tmp_path / "a.h5ad")
    back = read_h5ad(tmp_path / "j.h5ad")
    assert list(section_labels(back).categories) == ["A", "B"]
    assert (back.obsp["spatial_connectivities"] != joint.obsp["spatial_connectivities"]).nnz == 0
    assert section_labels(read_h5ad(tmp_path / "a.h5ad")) is None


# ---- platform geometry -------------------------------------------------------------------------------------

def _holder(xy, obs=None):
    a = ad.AnnData(sp.csr_matrix((len(xy), 1), dtype=np.float32), obs=obs)
    a.obsm["spatial"] = np.asarray(xy, dtype=np.float64)
    return a


def _graph(adata, source=None, **settings):
    from tissuelens.spatial_graph import build_spatial_graph

    record = build_spatial_graph(adata, {**step_defaults("preprocess")["spatial_graph"], **settings}, source=source,
                                 where="t")
    return record, sp.csr_matrix(adata.obsp["spatial_connectivities"])


def test_square_grid_by_rings_has_four_then_twelve_neighbours():
    """Visium HD bins (and the synthetic blocks/quilt grids): 4 edge neighbours, never 2 of 4 diagonals."""
    a = _section("blocks", 0, "A")
    record, g = _graph(a)
    assert (record["method"], record["n_neighs"]) == ("grid", 4)
    degree = np.diff(g.indptr).reshape(20, 20)
    assert degree[1:-1, 1:-1].min() == degree[1:-1, 1:-1].max() == 4 and degree[0, 0] == 2
    record, g = _graph(a, n_rings=2)
    assert np.diff(g.indptr).reshape(20, 20)[5, 5] == 12  # 4 + 8 within two steps on the lattice
    # no bin array in obs, but the source says Visium HD: still the square grid
    record, _ = _graph(_holder(a.obsm["spatial"]), source="visium_hd")
    assert (record["method"], record["n_neighs"]) == ("grid", 4)


def test_hexagonal_grid_has_six_neighbours_and_no_edge_across_a_hole():
    from tissuelens.datasets.synthetic import make_synthetic

    a = make_synthetic(n_spots=400, n_genes=10, seed=0)  # the demo's hexagonal Visium-like grid
    record, g = _graph(a)
    assert (record["method"], record["n_neighs"]) == ("grid", 6)
    degree = np.diff(g.indptr).reshape(20, 20)
    assert degree[2:-2, 2:-2].min() == degree[2:-2, 2:-2].max() == 6
    # cut a hole of 3 x 3 spots: the spots around it lose neighbours instead of being bridged across it
    keep = ~((a.obs["array_row"].between(8, 10)) & (a.obs["array_col"].between(16, 22))).to_numpy()
    holed = a[keep].copy()
    _, g = _graph(holed)
    xy = holed.obsm["spatial"]
    coo = g.tocoo()
    lengths = np.linalg.norm(xy[coo.row] - xy[coo.col], axis=1)
    assert lengths.max() <= lengths.min() * 1.05  # every edge is one lattice step


def test_single_cells_by_delaunay_without_long_edges():
    rng = np.random.default_rng(0)
    left = rng.uniform(0, 100, size=(300, 2))
    right = rng.uniform(0, 100, size=(300, 2)) + [400, 0]  # a gap of 300 between two pieces of tissue
    a = _holder(np.vstack([left, right]))
    record, g = _graph(a, source="xenium")
    assert record["method"] == "delaunay" and record["max_edge"] < 50
    coo = g.tocoo()
    assert ((coo.row < 300) != (coo.col < 300)).sum() == 0  # nothing bridges the gap
    assert 4.5 < record["mean_degree"] < 6.0  # a triangulation: about 6 neighbours, fewer on the outline
    record, g = _graph(a, method="knn", n_neighs=5)
    assert record["method"] == "knn" and np.diff(g.indptr).min() == 5
    record, g = _graph(a, method="radius", radius=10.0)
    coo = g.tocoo()
    assert np.linalg.norm(a.obsm["spatial"][coo.row] - a.obsm["spatial"][coo.col], axis=1).max() <= 10.0
    with pytest.raises(InputError, match="t: preprocess.spatial_graph.method radius needs preprocess.spatial_graph.radius"):
        _graph(a, method="radius")


def test_setting_overrides_the_platform():
    a = _section("blocks", 0, "A")
    record, g = _graph(a, method="knn", n_neighs=8)
    assert record["method"] == "knn" and record["reason"].startswith("set by")
    assert np.diff(g.indptr).min() == 8


# ---- PNMF-GP: no covariance across sections, loadings shared ----------------------------------------------

@pytest.fixture(scope="module")
def factor_input():
    """Two 12 x 12 sections on one grid (blocks / quilt), groups from the synthetic data, through preprocess."""
    a, b = _section("blocks", 0, "A", 144), _section("quilt", 1, "B", 144)
    both = ad.concat([a, b], merge="same")
    both.obsm["spatial"] = np.vstack([a.obsm["spatial"], b.obsm["spatial"]])
    joint, _ = _preprocess(both, {"section_key": "slice", "group_key": "group"})
    return joint


def _factor_settings(**kw):
    from helpers.factorize_fixtures import settings

    return settings(n_factors=3, n_inducing=40, n_neighbors=5, max_iter=15, learning_rate=0.05, **kw)


def test_sectioned_kernel_is_exactly_zero_across_sections():
    import torch

    from tissuelens.factorize.kernels import FactorKernel

    xy = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.0]])
    sec = torch.tensor([[0.0], [0.0], [1.0]])
    plain = FactorKernel(2, 1.0)
    cut = FactorKernel(2, 1.0, sectioned=True)
    k = cut.matrix(torch.cat([xy, sec], 1), torch.cat([xy, sec], 1))
    ref = plain.matrix(xy, xy)
    assert k.shape == (2, 3, 3)
    assert torch.all(k[:, 0, 2] == 0) and torch.all(k[:, 1, 2] == 0)  # same place, other section: zero
    torch.testing.assert_close(k[:, :2, :2], ref[:, :2, :2])  # same section: the usual kernel
    torch.testing.assert_close(cut.matrix(torch.cat([xy, sec], 1), torch.cat([xy, sec], 1), diag=True),
                               plain.matrix(xy, xy, diag=True))
    grouped = FactorKernel(2, 1.0, n_groups=2, sectioned=True)  # MGGP: x, y, group, section
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    kg = grouped.matrix(x, x)
    assert torch.all(kg[:, 0, 1] > 0) and torch.all(kg[:, 0, 2] == 0)


@pytest.mark.parametrize("variant", ["svgp", "mggp_svgp"])
def test_svgp_inducing_points_per_section_and_no_shared_posterior(factor_input, variant):
    """Each section gets its own inducing points; the posterior at section A's cells does not move when
    section B's variational parameters do (no factor is shared across sections, only the loadings)."""
    import torch

    from tissuelens.factorize.data import load_factor_data
    from tissuelens.factorize.metrics import posterior
    from tissuelens.factorize.model import build_model

    s = _factor_settings()
    data = load_factor_data(factor_input, s, variant, 0, "two")
    assert data.section_names == ["A", "B"]
    model = build_model(variant, data, s)
    z = model.prior.inducing
    z_sec = z[:, -1].round().long().numpy()
    assert set(z_sec) == {0, 1} and abs((z_sec == 0).sum() - (z_sec == 1).sum()) <= 1  # equal sections, equal shares
    kuu = model.prior.kernel.matrix(z, z)
    assert torch.all(kuu[:, z_sec == 0][:, :, z_sec == 1] == 0)
    mu, var = posterior(model, data, variant, 64)
    dist = model.prior.variational_strategy._variational_distribution
    with torch.no_grad():
        dist.variational_mean[:, z_sec == 1] += 3.0
        dist.chol_variational_covar[:, z_sec == 1] *= 2.0
    model.prior._kernel_cache = None
    mu2, var2 = posterior(model, data, variant, 64)
    in_a = data.sections == 0
    np.testing.assert_allclose(mu2[in_a], mu[in_a], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(var2[in_a], var[in_a], rtol=1e-5, atol=1e-5)
    assert np.abs(mu2[~in_a] - mu[~in_a]).max() > 1.0


@pytest.mark.parametrize("variant", ["lcgp", "mggp_lcgp"])
def test_lcgp_neighbours_stay_in_their_section(factor_input, variant):
    from tissuelens.factorize.data import load_factor_data
    from tissuelens.factorize.model import build_model, kernel_inputs

    s = _factor_settings()
    data = load_factor_data(factor_input, s, variant, 0, "two")
    model = build_model(variant, data, s)
    sec = data.sections[data.train_idx]
    nbr = model.prior.neighbors.numpy()
    assert (sec[nbr] == sec[:, None]).all()
    # prediction at held-out cells conditions on cells of their own section only
    held = data.val_idx
    q = model.prior._knn(model.prior._search(kernel_inputs(data, variant, held)), nbr.shape[1])
    assert (sec[q] == data.sections[held][:, None]).all()


def test_training_and_analysis_write_per_section_results(factor_input, tmp_path):
    from tissuelens.factorize.run import analyse_variant, train_variant

    s = _factor_settings()
    train_variant(factor_input, "svgp", s, tmp_path / "model", tmp_path / "elbo.csv", "two")
    analyse_variant(factor_input, "svgp", s, tmp_path / "model", tmp_path / "elbo.csv", tmp_path / "out", "two")
    moran = pd.read_csv(tmp_path / "out" / "moran_i.csv")
    assert {"moran_i[A]", "moran_i[B]"} <= set(moran.columns)
    mean = (moran["moran_i[A]"] * 144 + moran["moran_i[B]"] * 144) / 288  # equal sections: the plain mean
    np.testing.assert_allclose(moran["moran_i"], mean, rtol=1e-6)
    assert (moran["moran_i"].diff().dropna() <= 1e-12).all()  # factors ordered by it
    inducing = pd.read_csv(tmp_path / "out" / "inducing_points.csv")
    assert set(inducing["section"]) == {"A", "B"}


def test_factor_morans_i_per_section_equals_the_section_alone(factor_input):
    """Moran's I of any values, per section on the recorded graph, equals the section's own."""
    from tissuelens.factorize.metrics import morans_i, morans_i_by_section
    from tissuelens.spatial_graph import section_labels, spatial_connectivities

    rng = np.random.default_rng(0)
    values = rng.random((factor_input.n_obs, 2)) + np.asarray(factor_input.obsm["spatial"])[:, :1] / 1000
    labels = section_labels(factor_input)
    graph = spatial_connectivities(factor_input, "two")
    xy = np.asarray(factor_input.obsm["spatial"])
    _, per = morans_i_by_section(values, xy, np.asarray(labels.codes), list(labels.categories), graph)
    for code, name in enumerate(labels.categories):
        rows = np.flatnonzero(np.asarray(labels.codes) == code)
        alone = morans_i(values[rows], xy[rows], graph=graph[rows][:, rows])
        np.testing.assert_allclose(per[name], alone, rtol=1e-10)
    assert per["A"][0] > 0.3  # the x trend is autocorrelated on each section's own graph


# ---- config: the MERFISH example, the datasets sheet, the schema -----------------------------------------

def test_merfish_example_sets_its_slice_column_and_validates():
    import yaml

    from tissuelens.config import REPO_CONFIG_DIR, validate_config

    path = REPO_CONFIG_DIR / "examples" / "merfish.yaml"
    config = yaml.safe_load(path.read_text())
    validate_config(config, source=str(path))
    assert config["datasets"]["merfish"]["section_key"] == "Bregma"
    # Bregma values are numbers: sections sort by value, labels stay text
    from tissuelens.sections import section_labels_from

    obs = pd.DataFrame({"Bregma": [-9.0, 0.26, -0.04, -9.0]}, index=list("abcd"))
    assert list(section_labels_from(obs, "Bregma", "m").categories) == ["-9.0", "-0.04", "0.26"]


def test_sheet_column_section_key_is_text(tmp_path):
    from tissuelens.sheet import read_sheet

    sheet = tmp_path / "s.tsv"
    sheet.write_text("dataset\tsource\tspatial\tpath\tsection_key\tpreprocess.spatial_graph.method\n"
                     "mf\tlocal\ttrue\tx.h5ad\t12\tgrid\n")
    entry = read_sheet(sheet)["mf"]
    assert entry["section_key"] == "12" and entry["preprocess"]["spatial_graph"]["method"] == "grid"
    sheet.write_text("dataset\tsource\tspatial\tpath\tpreprocess.spatial_graph.method\nmf\tlocal\ttrue\tx.h5ad\thex\n")
    with pytest.raises(InputError, match=r"s.tsv: line 2 \(dataset 'mf'\): .*hex"):
        read_sheet(sheet)


def test_section_key_on_a_non_spatial_dataset_names_its_samples():
    # single-cell data: section_key names each cell's sample (Scrublet runs per sample); a bad one still fails
    from tissuelens.datasets.contract import finalize

    a = ad.AnnData(sp.csr_matrix(np.ones((3, 2), dtype=np.int64)), obs=pd.DataFrame({"s": ["a", "b", "a"]},
                                                                                     index=["c1", "c2", "c3"]))
    done = finalize(a.copy(), {"source": "local", "spatial": False, "section_key": "s"}, "in.h5ad", "d", 0)
    assert done.uns["tissuelens"]["section_key"] == "s" and done.uns["tissuelens"]["spatial"] is False
    with pytest.raises(InputError, match=r"in.h5ad: section_key 'sample' is not an obs column"):
        finalize(a, {"source": "local", "spatial": False, "section_key": "sample"}, "in.h5ad", "d", 0)


def test_sae_feature_morans_i_per_section(factor_input):
    """SAE features' Moran's I on the recorded graph, per section: the mean of each section's own I."""
    from tissuelens.spatial_graph import section_labels, spatial_connectivities
    from tissuelens.sae import features as F

    codes = np.asarray(section_labels(factor_input).codes)
    graph = spatial_connectivities(factor_input, "two")
    xy = np.asarray(factor_input.obsm["spatial"])
    rng = np.random.default_rng(1)
    acts = sp.csr_matrix(np.column_stack([xy[:, 0] * (codes == 0), rng.random(len(xy))]))
    res = F.morans_i(acts, xy, np.array([0, 1]), graph=graph, sections=codes).set_index("feature")
    each = [F.morans_i(acts[codes == c], xy[codes == c], np.array([0, 1]), graph=graph[codes == c][:, codes == c])
            .set_index("feature") for c in (0, 1)]
    assert np.isnan(each[1].loc[0, "moran_i"])  # feature 0 is off (constant) in section B: B is left out
    assert res.loc[0, "moran_i"] == pytest.approx(each[0].loc[0, "moran_i"], rel=1e-10)
    assert res.loc[0, "moran_i"] > 0.8 and res.loc[0, "moran_pval"] == each[0].loc[0, "moran_pval"]
    np.testing.assert_allclose(res.loc[1, "moran_i"], (each[0].loc[1, "moran_i"] + each[1].loc[1, "moran_i"]) / 2,
                               rtol=1e-10)
    assert res.loc[1, "moran_pval"] == max(each[0].loc[1, "moran_pval"], each[1].loc[1, "moran_pval"])


def test_report_maps_draw_sections_side_by_side(prepared, tmp_path):
    from tissuelens.report.context import Context
    from tissuelens.report.dataset import _tissue
    from tissuelens.report.html import Figures

    joint, _, alone = prepared
    ctx = Context("two", joint, {}, {}, {"max_points": 50000}, {"seed": 0}, Figures(out_dir=tmp_path / "fig"))
    xy = ctx.coords
    section = joint.obs["slice"].astype(str).to_numpy()
    a, b = xy[section == "A"], xy[section == "B"]
    assert a[:, 0].max() < b[:, 0].min()  # B drawn to the right of A, no overlap
    np.testing.assert_allclose(b[:, 1], a[:, 1])  # same rows of the shared grid
    np.testing.assert_allclose(np.ptp(b, axis=0), np.ptp(alone["B"].obsm["spatial"], axis=0))
    assert "2 tissue sections (A, B), drawn side by side" in _tissue(ctx)
    single = Context("one", alone["A"], {}, {}, {}, {"seed": 0}, Figures(out_dir=tmp_path / "fig1"))
    np.testing.assert_array_equal(single.coords, alone["A"].obsm["spatial"])


def test_scripts_preprocess_domains_analyze_on_two_sections(tmp_path):
    """The rules' scripts end to end on a two-section raw file: the graph recorded once, used by each step."""
    both, _, _ = two_sections()
    raw = tmp_path / "raw.h5ad"
    both.write_h5ad(raw)
    entry = json.dumps({"source": "synthetic", "spatial": True, "section_key": "slice"})
    pre = json.dumps({**step_defaults("preprocess"), "n_top_genes": None, "min_counts": 1, "min_genes": 1,
                      "min_cells": 0})
    analyze_settings = step_defaults("analyze")
    analyze_settings["spatial_stats"].update(n_perms=20, co_occurrence_intervals=4)
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}

    def run(script, *args):
        proc = subprocess.run([sys.executable, str(ROOT / "workflow" / "scripts" / f"{script}.py"), *map(str, args)],
                              capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]

    run("preprocess", "--raw", raw, "--entry", entry, "--settings", pre, "--out", tmp_path / "p.h5ad",
        "--qc", tmp_path / "qc.json")
    qc = json.loads((tmp_path / "qc.json").read_text())
    assert qc["spatial_graph"]["sections"] == ["A", "B"] and qc["spatial_graph"]["method"] == "grid"
    run("domains", "--raw", raw, "--entry", entry, "--preprocess-settings", pre,
        "--settings", json.dumps(analyze_settings["domains"]), "--out", tmp_path / "domains.parquet",
        "--record", tmp_path / "domains.json")
    record = json.loads((tmp_path / "domains.json").read_text())
    found = pd.read_parquet(tmp_path / "domains.parquet")["spatial_domain"].nunique()
    assert record["chosen_by"] == "stability" and record["n_domains"] == found
    run("analyze", "--h5ad", tmp_path / "p.h5ad", "--domains", tmp_path / "domains.parquet", "--entry", entry,
        "--settings", json.dumps(analyze_settings), "--outdir", tmp_path / "an")
    svg = pd.read_csv(tmp_path / "an" / "spatially_variable_genes.csv")
    assert svg.groupby("section").size().to_dict() == {"A": 60, "B": 60}
    cooc = pd.read_csv(tmp_path / "an" / "co_occurrence.csv")
    assert set(cooc["section"]) == {"A", "B"}
    summary = json.loads((tmp_path / "an" / "summary.json").read_text())
    assert set(summary["moran"]["per_section"]) == {"A", "B"}


def test_a_section_too_small_for_its_graph_is_one_clear_error():
    xy = np.random.default_rng(0).random((12, 2))
    obs = pd.DataFrame({"s": ["a"] * 10 + ["b"] * 2}, index=[f"c{i}" for i in range(12)])
    from tissuelens.spatial_graph import build_spatial_graph

    settings = step_defaults("preprocess")["spatial_graph"]
    with pytest.raises(InputError, match=r"x.h5ad: section 'b' has 2 cells after preprocessing; a delaunay spatial "
                                         r"graph needs at least 3"):
        build_spatial_graph(_holder(xy, obs), settings, "s", "xenium", "x.h5ad")
    with pytest.raises(InputError, match=r"section 'b' has 2 cells .* a knn spatial graph needs at least 7"):
        build_spatial_graph(_holder(xy, obs), {**settings, "method": "knn"}, "s", "xenium", "x.h5ad")


def test_cells_on_a_line_get_a_knn_graph_instead_of_a_triangulation(caplog):
    """Collinear coordinates (a strip of spots) have no Delaunay triangulation: a logged kNN graph instead."""
    from tissuelens.spatial_graph import build_spatial_graph

    xy = np.column_stack([np.arange(20.0), np.zeros(20)])
    a = _holder(xy, pd.DataFrame(index=[f"c{i}" for i in range(20)]))
    record = build_spatial_graph(a, step_defaults("preprocess")["spatial_graph"], None, "xenium", "line.h5ad")
    assert record["method"] == "knn" and "collinear" in record["reason"]
    conn = a.obsp["spatial_connectivities"]
    assert (np.diff(conn.indptr) >= 6).all() and conn[0, 1] > 0  # every cell linked to its neighbours on the line
    assert "lie on a line" in caplog.text


def two_coloured_sections():
    """Sections 'A' and 'B' of 36 spots on the same coordinates, normalised, each with its own solid image
    (A red, B blue) in uns["spatial"][<section>], and the spatial graph recorded per section."""
    import scanpy as sc

    from tissuelens.datasets.synthetic import make_synthetic
    from tissuelens.spatial_graph import build_spatial_graph

    parts = []
    for name, colour in (("A", (200, 30, 30)), ("B", (30, 30, 200))):
        a = make_synthetic(n_spots=36, n_genes=70, n_spatial_factors=2, n_groups=2, seed=2, image_size=120,
                           library_id=name)
        a.obs_names = [f"{name}_{i}" for i in a.obs_names]
        a.obs["slice"] = name
        lib = a.uns["spatial"][name]
        lib["images"] = {k: np.broadcast_to(np.array(colour, dtype=np.uint8), v.shape[:2] + (3,)).copy()
                         for k, v in lib["images"].items()}
        parts.append(a)
    both = ad.concat(parts, merge="same")
    both.obsm["spatial"] = np.vstack([p.obsm["spatial"] for p in parts])
    both.uns["spatial"] = {p.obs["slice"].iloc[0]: p.uns["spatial"][p.obs["slice"].iloc[0]] for p in parts}
    both.layers["counts"] = both.X.copy()
    sc.pp.normalize_total(both, target_sum=1e4)
    sc.pp.log1p(both)
    build_spatial_graph(both, step_defaults("preprocess")["spatial_graph"], "slice", "synthetic", "two")
    return both


def test_narrative_and_report_show_each_sections_own_image_side_by_side(tmp_path):
    """The narrative's prompt counts the sections and its picture holds each section's own image, left to right
    (not the first library's image alone), as the report's tissue figure does; one image for several sections
    is named as the slide's."""
    import base64
    import io

    from PIL import Image

    from tissuelens.report.context import Context
    from tissuelens.report.dataset import _tissue
    from tissuelens.report.html import Figures
    from tissuelens.report.prompt import make_narrative

    both = two_coloured_sections()
    ctx = Context("two", both, {}, {}, {"max_points": 50000}, {"seed": 0}, Figures(out_dir=tmp_path / "fig"))
    html = _tissue(ctx)
    assert "Each section&#x27;s tissue image and the spots" in html and "no tissue image" not in html
    figure = np.asarray(Image.open(tmp_path / "fig/dataset/tissue.png").convert("RGB")).reshape(-1, 3)
    assert (figure == [200, 30, 30]).all(axis=1).sum() > 1000 and (figure == [30, 30, 200]).all(axis=1).sum() > 1000

    rec = make_narrative("two", {}, {}, both, {}, {"image_size": 64})
    assert rec["withheld"] == [] and "measured on spots of 2 sections, analysed apart" in rec["prompt"]
    assert "Images of the 2 stained sections are attached side by side, left to right" in rec["prompt"]
    assert rec["image"]["original_size"] == [120, 120 + 6 + 120]  # a gap of a twentieth of the height
    picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(rec["image"]["png_base64"]))))
    assert picture.shape == (64, 64, 3)
    row = picture[32]
    np.testing.assert_array_equal(row[5], [200, 30, 30])  # left: section A's own image
    np.testing.assert_array_equal(row[58], [30, 30, 200])  # right: section B's
    assert (picture[5] == 255).all()  # letterbox padding above the wide picture

    del both.uns["spatial"]["B"]  # one image for the two sections: the slide's, said so
    rec = make_narrative("two", {}, {}, both, {}, {"image_size": 64})
    assert "An image of the stained slide that holds the sections is attached" in rec["prompt"]
    assert rec["image"]["original_size"] == [120, 120]


def test_loki_patches_come_from_each_sections_own_image(tmp_path):
    """Two sections on the same coordinates, each with its own image (library named after the section): every
    spot's patch is cut from its own section's image, and retrieval neighbours stay in the section."""
    pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    import importlib.util

    from tissuelens import cli
    from tissuelens.embed.loki.agreement import spatial_neighbours
    from tissuelens.embed.loki.patches import spot_images
    from tissuelens.models import loki as lm

    both = two_coloured_sections()
    pairs = spot_images(both, "two")
    assert [one.library for _, one in pairs] == ["A", "B"] and [len(r) for r, _ in pairs] == [36, 36]
    codes = np.repeat([0, 1], 36)
    nbr = spatial_neighbours(both.obsm["spatial"], 6, codes)
    assert (codes[nbr] == codes[:, None]).all()

    h5ad = tmp_path / "two.h5ad"
    both.write_h5ad(h5ad)
    model = tmp_path / "loki_tiny"
    lm.build_random(model, seed=0)
    (model / lm.MANIFEST).write_text(json.dumps({"kind": "loki", "source": "random", "untrained": True}))
    out = tmp_path / "out"
    spec = importlib.util.spec_from_file_location("embed_loki_script", ROOT / "workflow" / "scripts" / "embed_loki.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cli.run(mod.main, ["--h5ad", str(h5ad), "--model-dir", str(model), "--model", "loki_tiny",
                       "--settings", json.dumps({"progress": False}), "--out", str(out / "e.h5ad"),
                       "--activations", str(out / "act"), "--metrics", str(out / "m.json")])
    metrics = json.loads((out / "m.json").read_text())
    assert metrics["image"]["library"] == ["A", "B"] and metrics["retrieval"]["neighbours"] == 6
    img = ad.read_h5ad(out / "e.h5ad").obsm["X_loki_image"]
    # solid images: every patch of a section is the same picture, and the two sections' pictures differ
    np.testing.assert_allclose(img[:36], np.broadcast_to(img[0], (36, img.shape[1])), atol=1e-5)
    np.testing.assert_allclose(img[36:], np.broadcast_to(img[36], (36, img.shape[1])), atol=1e-5)
    assert np.abs(img[0] - img[36]).max() > 1e-3
