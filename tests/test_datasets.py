"""Dataset sources and the download script: synthetic, local files, URLs, and bad input."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import error_line, run_script
from helpers.tenx import write_10x_h5, write_visium_folder

from tissuelens.datasets.load import load_dataset
from tissuelens.datasets.synthetic import make_synthetic
from tissuelens.errors import InputError
from tissuelens.io import sha256_of

SPATIAL = {"source": "local", "spatial": True}


def download(tmp_path, entry, dataset="d", seed=0):
    out = tmp_path / "resources" / dataset / "raw.h5ad"
    proc = run_script("download", "--dataset", dataset, "--entry", json.dumps(entry), "--seed", seed, "--out", out)
    return proc, out


# --- synthetic -------------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_follows_the_contract():
    a = make_synthetic(n_spots=300, n_genes=50, n_spatial_factors=3, n_groups=4, seed=7, image_size=100)
    b = make_synthetic(n_spots=300, n_genes=50, n_spatial_factors=3, n_groups=4, seed=7, image_size=100)
    c = make_synthetic(n_spots=300, n_genes=50, n_spatial_factors=3, n_groups=4, seed=8, image_size=100)
    assert (a.X != b.X).nnz == 0 and (a.X != c.X).nnz > 0
    assert np.issubdtype(a.X.dtype, np.integer) and a.X.min() >= 0
    assert a.obsm["spatial"].shape == (300, 2)
    assert a.obsm["true_factors"].shape == (300, 4) and (a.obsm["true_factors"] > 0).all()
    assert a.varm["true_loadings"].shape == (50, 4) and (a.varm["true_loadings"] >= 0).all()
    assert list(a.uns["true_factors_spatial"]) == [True, True, True, False]
    assert a.obs["group"].nunique() == 4
    assert a.var["gene_ids"].str.match(r"^ENSG\d{11}$").all()
    assert a.var_names[0] == "MT-CO1"
    lib = a.uns["spatial"]["demo"]
    assert lib["images"]["hires"].shape == (100, 100, 3) and lib["images"]["hires"].dtype == np.uint8
    # spots map inside the hires image through the scale factor (scanpy convention)
    px = a.obsm["spatial"] * lib["scalefactors"]["tissue_hires_scalef"]
    assert px.min() >= 0 and px.max() < 100


def test_synthetic_factors_are_smooth_in_space():
    a = make_synthetic(n_spots=400, n_genes=40, seed=3, image_size=64)
    from sklearn.neighbors import NearestNeighbors

    _, nn = NearestNeighbors(n_neighbors=7).fit(a.obsm["spatial"]).kneighbors(a.obsm["spatial"])
    logf = np.log(a.obsm["true_factors"])
    for j, spatial in enumerate(a.uns["true_factors_spatial"]):
        neighbour_corr = np.corrcoef(logf[:, j], logf[nn[:, 1:], j].mean(1))[0, 1]
        assert (neighbour_corr > 0.8) if spatial else (abs(neighbour_corr) < 0.3)


def test_download_synthetic_via_script(tmp_path):
    entry = {"source": "synthetic", "spatial": True, "group_key": "group", "synthetic": {"n_spots": 100, "n_genes": 30, "image_size": 64}}
    proc, out = download(tmp_path, entry, dataset="demo", seed=5)
    assert proc.returncode == 0, proc.stderr
    adata = ad.read_h5ad(out)
    assert adata.shape == (100, 30)
    assert adata.uns["tissuelens"]["dataset"] == "demo"
    assert np.issubdtype(adata.X.dtype, np.integer)


# --- local files -----------------------------------------------------------------------------


def test_local_h5ad_with_counts_layer_spatial_key_labels_and_subsample(tmp_path, small_synthetic):
    adata = small_synthetic.copy()
    adata.layers["raw"] = adata.X.copy()
    adata.X = sp.csr_matrix(np.log1p(adata.X.toarray()).astype(np.float32))  # normalised X, counts in a layer
    adata.obsm["X_spatial"] = adata.obsm.pop("spatial")
    path = tmp_path / "in.h5ad"
    adata.write_h5ad(path)
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"cell_id": adata.obs_names[::2], "cell_type": ["A", "B"] * (adata.n_obs // 4)}).to_csv(labels, index=False)
    entry = {**SPATIAL, "path": str(path), "counts_layer": "raw", "spatial_key": "X_spatial",
             "labels": {"path": str(labels), "column": "cell_type"}, "group_key": "cell_type", "subsample": 150}
    out = load_dataset("d", entry, seed=0, cache_dir=tmp_path / "cache")
    assert out.n_obs == 150
    assert np.issubdtype(out.X.dtype, np.integer)
    np.testing.assert_array_equal(out.X.toarray(), small_synthetic[out.obs_names].X.toarray())
    np.testing.assert_allclose(out.obsm["spatial"], small_synthetic[out.obs_names].obsm["spatial"])
    labelled = out.obs["cell_type"].notna()
    assert set(out.obs["cell_type"][labelled]) == {"A", "B"}
    assert not labelled.all()  # odd cells had no label: kept as missing for preprocess to drop
    # the same seed picks the same cells
    again = load_dataset("d", entry, seed=0, cache_dir=tmp_path / "cache")
    assert list(again.obs_names) == list(out.obs_names)


def test_local_10x_h5(tmp_path, small_synthetic):
    path = tmp_path / "matrix.h5"
    barcodes = [f"BC{i}" for i in range(small_synthetic.n_obs)]
    write_10x_h5(path, small_synthetic.X, barcodes, small_synthetic.var["gene_ids"], small_synthetic.var_names)
    out = load_dataset("d", {"source": "local", "spatial": False, "path": str(path)}, 0, tmp_path / "cache")
    assert out.shape == small_synthetic.shape
    assert list(out.var["gene_ids"]) == list(small_synthetic.var["gene_ids"])
    np.testing.assert_array_equal(out.X.toarray(), small_synthetic.X.toarray())


def test_local_visium_folder_keeps_images_and_scalefactors(tmp_path, small_synthetic):
    outs = tmp_path / "outs"
    write_visium_folder(outs, small_synthetic, library_id="sampleA")
    proc, out = download(tmp_path, {"source": "local", "spatial": True, "path": str(outs)})
    assert proc.returncode == 0, proc.stderr
    adata = ad.read_h5ad(out)
    assert adata.shape == small_synthetic.shape
    np.testing.assert_allclose(adata.obsm["spatial"], np.round(small_synthetic.obsm["spatial"]), atol=0.5)
    lib = adata.uns["spatial"]["sampleA"]
    assert lib["images"]["hires"].shape[:2] == (128, 128)
    expected = small_synthetic.uns["spatial"]["demo"]["scalefactors"]["tissue_hires_scalef"]
    assert lib["scalefactors"]["tissue_hires_scalef"] == pytest.approx(expected)


# --- URLs ------------------------------------------------------------------------------------


def test_url_with_matching_sha256(tmp_path, small_synthetic):
    src = tmp_path / "remote.h5ad"
    small_synthetic.write_h5ad(src)
    entry = {"source": "url", "spatial": True, "url": src.as_uri(), "sha256": sha256_of(src)}
    proc, out = download(tmp_path, entry)
    assert proc.returncode == 0, proc.stderr
    assert ad.read_h5ad(out).shape == small_synthetic.shape


def test_url_sha256_mismatch_fails_and_keeps_nothing(tmp_path, small_synthetic):
    src = tmp_path / "remote.h5ad"
    small_synthetic.write_h5ad(src)
    entry = {"source": "url", "spatial": True, "url": src.as_uri(), "sha256": "0" * 64}
    proc, out = download(tmp_path, entry)
    assert proc.returncode == 2
    line = error_line(proc)
    assert "sha256 mismatch" in line and src.as_uri() in line
    assert not out.exists()
    assert not (out.parent / "cache" / "remote.h5ad").exists()


# --- bad input -------------------------------------------------------------------------------


def _write(tmp_path, adata, name="in.h5ad"):
    path = tmp_path / name
    adata.write_h5ad(path)
    return path


def test_missing_path(tmp_path):
    proc, out = download(tmp_path, {**SPATIAL, "path": str(tmp_path / "nope.h5ad")})
    assert proc.returncode == 2
    assert "nope.h5ad: no such file or directory" in error_line(proc)
    assert not out.exists()


def test_file_that_is_not_h5ad(tmp_path):
    bad = tmp_path / "table.h5ad"
    bad.write_text("gene,count\nA,1\n")
    proc, out = download(tmp_path, {**SPATIAL, "path": str(bad)})
    assert proc.returncode == 2
    assert f"{bad}: not an .h5ad or 10x .h5 file" in error_line(proc)
    assert not out.exists()


def test_truncated_h5ad(tmp_path, small_synthetic):
    """A partly written file (a copy cut short) is one error line naming it, no output."""
    path = _write(tmp_path, small_synthetic)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    proc, out = download(tmp_path, {**SPATIAL, "path": str(path)})
    assert proc.returncode == 2
    line = error_line(proc)
    assert line.startswith(f"error: {path}: damaged HDF5 file") and "truncated" in line
    assert not out.exists()


def test_three_coordinate_columns_need_spatial_dims(tmp_path, small_synthetic):
    adata = small_synthetic.copy()
    xy = adata.obsm["spatial"]
    adata.obsm["spatial"] = np.column_stack([xy, np.arange(adata.n_obs, dtype=float)])  # x, y, z
    path = _write(tmp_path, adata)
    proc, out = download(tmp_path, {**SPATIAL, "path": str(path)})
    assert proc.returncode == 2
    assert "obsm['spatial'] has 3 columns; set spatial_dims: [i, j]" in error_line(proc)
    assert not out.exists()
    proc, out = download(tmp_path, {**SPATIAL, "path": str(path), "spatial_dims": [0, 2]})
    assert proc.returncode == 0, proc.stderr
    assert "using columns 0 and 2 of 3 as the spatial coordinates" in proc.stderr
    got = ad.read_h5ad(out).obsm["spatial"]
    np.testing.assert_array_equal(got, np.column_stack([xy[:, 0], np.arange(adata.n_obs)]))
    proc, _ = download(tmp_path, {**SPATIAL, "path": str(path), "spatial_dims": [1, 3]}, dataset="e")
    assert proc.returncode == 2 and "spatial_dims [1, 3] does not name two different columns of 3" in error_line(proc)


def test_non_integer_counts_without_counts_layer(tmp_path, small_synthetic):
    adata = small_synthetic.copy()
    adata.X = sp.csr_matrix(adata.X.toarray() * 0.37)
    path = _write(tmp_path, adata)
    proc, out = download(tmp_path, {**SPATIAL, "path": str(path)})
    assert proc.returncode == 2
    line = error_line(proc)
    assert str(path) in line and "non-integer values" in line and "counts_layer" in line
    assert not out.exists()


def test_spatial_without_coordinates(tmp_path, small_synthetic):
    adata = small_synthetic.copy()
    del adata.obsm["spatial"]
    path = _write(tmp_path, adata)
    proc, out = download(tmp_path, {**SPATIAL, "path": str(path)})
    assert proc.returncode == 2
    assert "spatial: true but obsm has no 'spatial' coordinates" in error_line(proc)
    assert not out.exists()


def test_group_key_not_in_obs(tmp_path, small_synthetic):
    path = _write(tmp_path, small_synthetic)
    proc, out = download(tmp_path, {**SPATIAL, "path": str(path), "group_key": "celltype"})
    assert proc.returncode == 2
    line = error_line(proc)
    assert "group_key 'celltype' is not an obs column" in line and str(path) in line
    assert not out.exists()


def test_unknown_source_in_script(tmp_path):
    proc, out = download(tmp_path, {"source": "ftp", "spatial": False})
    assert proc.returncode == 2
    assert "datasets.d.source: unknown source 'ftp'" in error_line(proc)


def test_unknown_squidpy_and_scanpy_names(tmp_path):
    with pytest.raises(InputError, match="squidpy dataset 'nope': unknown"):
        load_dataset("d", {"source": "squidpy", "spatial": True, "name": "nope"}, 0, tmp_path)
    with pytest.raises(InputError, match="scanpy dataset 'nope': unknown"):
        load_dataset("d", {"source": "scanpy", "spatial": False, "name": "nope"}, 0, tmp_path)
