"""Sources read through spatialdata-io (Visium HD, SpatialData zarr, ...) and the datasets sheet: each on
the smallest valid output folder of its platform, written here, through download -> preprocess; bad input."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
from conftest import error_line, run_script
from helpers.platforms import (write_cosmx_folder, write_merscope_region, write_spatialdata_regions, write_spatialdata_zarr,
                               write_visium_hd_folder, write_xenium_folder)

from tissuelens.config import step_defaults
from tissuelens.errors import InputError
from tissuelens.sheet import merge_sheet, read_sheet


def download(tmp_path, entry, dataset="d"):
    out = tmp_path / "resources" / dataset / "raw.h5ad"
    proc = run_script("download", "--dataset", dataset, "--entry", json.dumps(entry), "--seed", 0, "--out", out)
    return proc, out


def preprocess(tmp_path, raw, entry, dataset="d", **options):
    out, qc = tmp_path / "results" / dataset / "preprocessed.h5ad", tmp_path / "results" / dataset / "qc.json"
    settings = {**step_defaults("preprocess"), "min_counts": 5, "min_genes": 3, "n_top_genes": 20, **options}
    proc = run_script("preprocess", "--raw", raw, "--entry", json.dumps(entry), "--settings", json.dumps(settings),
                      "--out", out, "--qc", qc)
    assert proc.returncode == 0, proc.stderr
    return ad.read_h5ad(out), json.loads(qc.read_text())


# --- Visium HD -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hd_folder(tmp_path_factory):
    outs = tmp_path_factory.mktemp("hd") / "outs"
    return outs, write_visium_hd_folder(outs, grid=10, n_genes=30, bin_sizes=(8, 16))


def test_visium_hd_16um_through_download_and_preprocess(tmp_path, hd_folder):
    outs, truth = hd_folder
    entry = {"source": "visium_hd", "spatial": True, "path": str(outs), "bin_size": 16}
    proc, raw = download(tmp_path, entry, dataset="hd")
    assert proc.returncode == 0, proc.stderr
    adata = ad.read_h5ad(raw)
    bins = truth[16]
    assert list(adata.obs_names) == bins["barcodes"] and adata.n_vars == 30
    assert list(adata.var["gene_ids"]) == truth["ids"] and list(adata.var_names) == truth["symbols"]
    assert np.issubdtype(adata.X.dtype, np.integer)
    np.testing.assert_array_equal(adata.X.toarray(), bins["counts"])
    # bin centres in full-resolution pixels, exactly Space Ranger's pxl_col/row_in_fullres
    np.testing.assert_allclose(adata.obsm["spatial"], bins["xy"])
    assert {"in_tissue", "array_row", "array_col"} <= set(adata.obs.columns)
    lib = adata.uns["spatial"]["hd"]
    assert lib["images"]["hires"].dtype == np.uint8 and lib["images"]["hires"].shape[2] == 3
    sf = lib["scalefactors"]
    assert sf["tissue_hires_scalef"] == pytest.approx(0.1) and sf["spot_diameter_fullres"] == pytest.approx(32.0)
    assert sf["bin_size_um"] == 16 and sf["microns_per_pixel"] == pytest.approx(0.5)
    assert adata.uns["coordinates"]["unit"] == "pixel (full resolution)"
    # every bin lies on the hires image (Loki cuts its patches there)
    px = adata.obsm["spatial"] * sf["tissue_hires_scalef"]
    assert px.min() > 0 and (px < lib["images"]["hires"].shape[0]).all()

    pre, qc = preprocess(tmp_path, raw, entry, dataset="hd")
    assert qc["n_cells_raw"] == 100 and pre.n_obs == qc["n_cells"] > 0
    assert "spatial" in pre.obsm and "counts" in pre.layers


def test_visium_hd_8um_is_the_default_bin(tmp_path, hd_folder):
    outs, truth = hd_folder
    proc, raw = download(tmp_path, {"source": "visium_hd", "spatial": True, "path": str(outs)})
    assert proc.returncode == 0, proc.stderr
    adata = ad.read_h5ad(raw)
    assert list(adata.obs_names) == truth[8]["barcodes"]
    assert adata.uns["spatial"]["d"]["scalefactors"]["spot_diameter_fullres"] == pytest.approx(16.0)


def test_visium_hd_bin_size_the_folder_lacks(tmp_path, hd_folder):
    outs, _ = hd_folder
    proc, raw = download(tmp_path, {"source": "visium_hd", "spatial": True, "path": str(outs), "bin_size": 2})
    assert proc.returncode == 2
    line = error_line(proc)
    assert f"{outs}: no 2 µm bins (binned_outputs/square_002um is missing; bin sizes here: 8, 16)" in line
    assert not raw.exists()


@pytest.mark.parametrize("missing", ["binned_outputs/square_016um/spatial/tissue_positions.parquet",
                                     "binned_outputs/square_016um/filtered_feature_bc_matrix.h5",
                                     "feature_slice.h5"])
def test_visium_hd_folder_missing_a_file(tmp_path, missing):
    outs = tmp_path / "outs"
    write_visium_hd_folder(outs, grid=4, n_genes=10)
    (outs / missing).unlink()
    proc, raw = download(tmp_path, {"source": "visium_hd", "spatial": True, "path": str(outs), "bin_size": 16})
    assert proc.returncode == 2
    line = error_line(proc)
    assert f"missing {missing.rsplit('square_016um/', 1)[-1]}" in line or f"has no {missing}" in line
    assert str(outs) in line
    assert not raw.exists()


# --- SpatialData zarr ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zarr_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd") / "section.zarr"
    return path, write_spatialdata_zarr(path)


def test_spatialdata_zarr_through_download_and_preprocess(tmp_path, zarr_store):
    path, truth = zarr_store
    entry = {"source": "spatialdata", "spatial": True, "path": str(path), "table": "cells", "image": "he",
             "group_key": "celltype"}
    proc, raw = download(tmp_path, entry)
    assert proc.returncode == 0, proc.stderr
    adata = ad.read_h5ad(raw)
    assert list(adata.obs_names) == truth["ids"]
    np.testing.assert_array_equal(adata.X.toarray(), truth["counts"])
    # µm, origin moved to the image's corner (10, 20) so that coordinates x scalef = image pixels
    assert list(adata.uns["coordinates"]["origin"]) == [10.0, 20.0]
    np.testing.assert_allclose(adata.obsm["spatial"], truth["xy"] - [10, 20])
    np.testing.assert_allclose(adata.obs["area"], np.pi * truth["radius"] ** 2)
    sf = adata.uns["spatial"]["d"]["scalefactors"]
    assert sf["tissue_hires_scalef"] == pytest.approx(2.0)
    assert sf["spot_diameter_fullres"] == pytest.approx(np.median(2 * truth["radius"]))
    np.testing.assert_array_equal(adata.uns["spatial"]["d"]["images"]["hires"], np.moveaxis(truth["image"], 0, -1))

    pre, qc = preprocess(tmp_path, raw, entry)
    assert set(pre.obs["group"].cat.categories) == {"a", "b"} and qc["n_cells"] == pre.n_obs


def test_spatialdata_zarr_without_image_keeps_coordinates(tmp_path, zarr_store):
    path, truth = zarr_store
    proc, raw = download(tmp_path, {"source": "spatialdata", "spatial": True, "path": str(path)})
    assert proc.returncode == 0, proc.stderr
    adata = ad.read_h5ad(raw)
    np.testing.assert_allclose(adata.obsm["spatial"], truth["xy"])
    assert "spatial" not in adata.uns


@pytest.mark.parametrize("option, message", [
    ({"table": "genes"}, "no table 'genes' (tables: cells)"),
    ({"image": "dapi"}, "no image 'dapi' (images: he)"),
    ({"shapes": "nuclei"}, "no shapes 'nuclei' (shapes: cell_circles)"),
])
def test_spatialdata_zarr_without_the_named_element(tmp_path, zarr_store, option, message):
    path, _ = zarr_store
    proc, raw = download(tmp_path, {"source": "spatialdata", "spatial": True, "path": str(path), **option})
    assert proc.returncode == 2
    assert error_line(proc) == f"error: {path}: {message}"
    assert not raw.exists()


@pytest.fixture(scope="module")
def regions_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd_regions") / "sections.zarr"
    return path, write_spatialdata_regions(path)


def test_spatialdata_regions_become_sections(tmp_path, regions_store):
    """A table over two regions on overlapping coordinates (the same cell ids in both): each row keeps its
    region in obs['region'] and its own region's centre, and the section_key reaches preprocess's graph
    without the entry naming it."""
    path, truth = regions_store
    entry = {"source": "spatialdata", "spatial": True, "path": str(path)}
    proc, raw = download(tmp_path, entry)
    assert proc.returncode == 0, proc.stderr
    adata = ad.read_h5ad(raw)
    assert list(adata.obs["region"].astype(str)) == list(truth["region"])
    # the same cell ids in both regions: the region makes each row's name unique
    assert list(adata.obs_names) == [f"{r}_{c}" for r, c in zip(truth["region"], truth["cell_id"])]
    own = [truth["xy"][region][int(cell[4:])] for region, cell in zip(truth["region"], truth["cell_id"])]
    np.testing.assert_allclose(adata.obsm["spatial"], own)
    assert adata.uns["tissuelens"]["section_key"] == "region" and "entry_defaults" not in adata.uns
    assert adata.uns["coordinates"]["shapes"] == "s1, s2" and adata.uns["coordinates"]["coordinate_system"] == "global"

    pre, qc = preprocess(tmp_path, raw, entry)
    assert qc["spatial_graph"]["section_key"] == "region" and qc["spatial_graph"]["sections"] == ["s1", "s2"]
    edges = pre.obsp["spatial_connectivities"].tocoo()
    section = pre.obs["region"].astype(str).to_numpy()
    assert edges.nnz and (section[edges.row] == section[edges.col]).all()  # no edge joins the two sections


def test_spatialdata_regions_the_entry_chooses(tmp_path, regions_store):
    """The entry's own section_key wins; `shapes:` reads one region as before (no section); a non-spatial
    entry gets no section_key."""
    from tissuelens.datasets.load import load_dataset

    path, truth = regions_store
    entry = {"source": "spatialdata", "spatial": True, "path": str(path)}
    assert load_dataset("d", {**entry, "section_key": "celltype"}, 0, tmp_path).uns["tissuelens"]["section_key"] == "celltype"
    one = load_dataset("d", {**entry, "shapes": "s2"}, 0, tmp_path)
    assert one.n_obs == 30 and "region" not in one.obs and one.uns["tissuelens"]["section_key"] == ""
    np.testing.assert_allclose(one.obsm["spatial"], [truth["xy"]["s2"][int(c[4:])] for c in one.obs["cell_id"]])
    assert load_dataset("d", {**entry, "spatial": False}, 0, tmp_path).uns["tissuelens"]["section_key"] == ""


def test_spatialdata_regions_on_their_own_slides(tmp_path):
    """image: {region: image}: regions in coordinate systems they share with no other region, each placed from its
    own image's corner and its image stored under the region's name, so Loki cuts each section's patches from
    its own slide."""
    from tissuelens.datasets.load import load_dataset
    from tissuelens.embed.loki.patches import spot_images

    path = tmp_path / "slides.zarr"
    truth = write_spatialdata_regions(path, systems=("global", "other"), images=True)
    entry = {"source": "spatialdata", "spatial": True, "path": str(path), "image": {"s1": "he_s1", "s2": "he_s2"}}
    proc, raw = download(tmp_path, entry)
    assert proc.returncode == 0, proc.stderr
    adata = ad.read_h5ad(raw)
    assert set(adata.uns["spatial"]) == {"s1", "s2"} and adata.uns["tissuelens"]["section_key"] == "region"
    assert adata.uns["coordinates"]["coordinate_system"] == "global, other"
    origins = {k: list(v) for k, v in adata.uns["coordinates"]["origin"].items()}
    assert origins == {"s1": [-2.0, -1.0], "s2": [1.0, -6.0]}
    own = [np.subtract(truth["xy"][r][int(c[4:])], truth["corners"][r])
           for r, c in zip(truth["region"], truth["cell_id"])]
    np.testing.assert_allclose(adata.obsm["spatial"], own)
    pre, _ = preprocess(tmp_path, raw, entry)
    images = spot_images(pre, "d")
    assert len(images) == 2
    for rows, image in images:
        region = set(pre.obs["region"].astype(str).to_numpy()[rows])
        assert len(region) == 1 and len(rows) == 30
        colour = (255, 0, 0) if region == {"s1"} else (0, 0, 255)
        assert (image.image.reshape(-1, 3) == colour).all()
    with pytest.raises(InputError, match=r"image: names an image per region \(s1, s3\), but table 'cells' is read "
                                         r"over the regions s1, s2; name one image, or one for each region"):
        load_dataset("d", {**entry, "image": {"s1": "he_s1", "s3": "he_s2"}}, 0, tmp_path)
    with pytest.raises(InputError, match=r"no image 'he_s9'"):
        load_dataset("d", {**entry, "image": {"s1": "he_s1", "s2": "he_s9"}}, 0, tmp_path)


@pytest.mark.parametrize("options, message", [
    ({"systems": ("global", "other")},
     "the table's regions share no coordinate system (s1: global; s2: other); set shapes: to read one region, "
     "or image: {region: image} for regions on their own slides"),
    ({"third_region": True}, "table 'cells': 30 rows annotate region 's3', which is not a shapes element "
                             "(regions with shapes: s1, s2); set shapes: to read one region"),
])
def test_spatialdata_regions_that_cannot_be_placed(tmp_path, options, message):
    from tissuelens.datasets.spatialdata_zarr import read_spatialdata

    path = tmp_path / "bad.zarr"
    write_spatialdata_regions(path, n_per_region=30, **options)
    with pytest.raises(InputError) as err:
        read_spatialdata(path, "d")
    assert str(err.value) == f"{path}: {message}"


def test_not_a_zarr_store(tmp_path):
    folder = tmp_path / "empty.zarr"
    folder.mkdir()
    proc, raw = download(tmp_path, {"source": "spatialdata", "spatial": True, "path": str(folder)})
    assert proc.returncode == 2 and "not a zarr store" in error_line(proc) and not raw.exists()


# --- Xenium ----------------------------------------------------------------------------------


def test_xenium_through_download_and_preprocess(tmp_path):
    folder = tmp_path / "xenium"
    truth = write_xenium_folder(folder, n_cells=50, n_genes=20, pixel_size=0.2125)
    entry = {"source": "xenium", "spatial": True, "path": str(folder)}
    proc, raw = download(tmp_path, entry, dataset="xe")
    assert proc.returncode == 0, proc.stderr
    adata = ad.read_h5ad(raw)
    assert list(adata.obs_names) == truth["cell_ids"]
    assert list(adata.var_names) == truth["symbols"]  # negative-control probes are not genes
    np.testing.assert_array_equal(adata.X.toarray(), truth["counts"])
    np.testing.assert_allclose(adata.obsm["spatial"], truth["xy"])  # µm
    assert adata.uns["coordinates"]["unit"] == "micrometre"
    np.testing.assert_array_equal(adata.obs["control_probe_counts"], truth["controls"].sum(1))
    np.testing.assert_allclose(adata.obs["cell_area"], truth["area"])
    sf = adata.uns["spatial"]["xe"]["scalefactors"]
    assert sf["tissue_hires_scalef"] == pytest.approx(1 / 0.2125)  # morphology pixels per µm
    assert sf["spot_diameter_fullres"] == pytest.approx(np.median(2 * np.sqrt(truth["area"] / np.pi)))
    assert adata.uns["spatial"]["xe"]["images"]["hires"].shape == (941, 941, 3)

    pre, qc = preprocess(tmp_path, raw, entry, dataset="xe")
    assert qc["n_cells_raw"] == 50 and "cell_area" in pre.obs


@pytest.mark.parametrize("missing", ["cells.parquet", "cell_feature_matrix.h5", "experiment.xenium", "cells.zarr.zip"])
def test_xenium_folder_missing_a_file(tmp_path, missing):
    folder = tmp_path / "xenium"
    write_xenium_folder(folder, n_cells=10, n_genes=5)
    (folder / missing).unlink()
    proc, raw = download(tmp_path, {"source": "xenium", "spatial": True, "path": str(folder)})
    assert proc.returncode == 2
    assert error_line(proc) == f"error: {folder}: Xenium folder has no {missing}"
    assert not raw.exists()


# --- MERSCOPE ---------------------------------------------------------------------------------


def control_share(genes: np.ndarray, controls: np.ndarray) -> np.ndarray:
    return controls.sum(1) / (genes.sum(1) + controls.sum(1))


def test_merscope_through_download_and_preprocess(tmp_path):
    folder = tmp_path / "202312011200_run" / "region_0"
    truth = write_merscope_region(folder, n_cells=40, n_genes=15, um_per_px=0.5, shift_um=(-20.0, -10.0))
    entry = {"source": "merscope", "spatial": True, "path": str(folder)}
    proc, raw = download(tmp_path, entry, dataset="ms")
    assert proc.returncode == 0, proc.stderr
    adata = ad.read_h5ad(raw)
    assert list(adata.obs_names) == truth["ids"]
    assert list(adata.var_names) == truth["symbols"]  # Blank-* barcodes are not genes
    assert list(adata.uns["control_features"]) == ["Blank-0", "Blank-1"]
    np.testing.assert_array_equal(adata.X.toarray(), truth["counts"])
    np.testing.assert_array_equal(adata.obs["blank_counts"], truth["blanks"].sum(1))
    np.testing.assert_array_equal(adata.obs["transcript_counts"], truth["counts"].sum(1))
    np.testing.assert_allclose(adata.obs["volume"], truth["volume"])
    # µm, origin moved to the mosaic's corner (at shift_um), so that coordinates x scalef = mosaic pixels
    assert adata.uns["coordinates"]["unit"] == "micrometre"
    np.testing.assert_allclose(adata.uns["coordinates"]["origin"], truth["shift_um"])
    np.testing.assert_allclose(adata.obsm["spatial"], truth["xy"] - truth["shift_um"])
    lib = adata.uns["spatial"]["ms"]
    assert lib["scalefactors"]["tissue_hires_scalef"] == pytest.approx(truth["px_per_um"])
    hires = lib["images"]["hires"]
    assert hires.shape == truth["dapi"].shape + (3,) and hires.dtype == np.uint8
    # the DAPI mosaic (a darker upper half), not the flat PolyT one, the right way up
    half = hires.shape[0] // 2
    assert hires[:half].mean() < 0.5 * hires[half:].mean()
    px = adata.obsm["spatial"] * lib["scalefactors"]["tissue_hires_scalef"]
    assert px.min() > 0 and (px < hires.shape[0]).all()

    pre, qc = preprocess(tmp_path, raw, entry, dataset="ms", max_control_fraction=0.03)
    share = control_share(truth["counts"], truth["blanks"])
    assert 0 < (share > 0.03).sum() < 40  # the filter has something to do
    assert qc["cells_removed"]["min_transcripts"] == 0
    assert qc["cells_removed"]["max_control_fraction"] == int((share > 0.03).sum())
    kept = [i for i, s in zip(truth["ids"], share) if s <= 0.03]
    assert set(pre.obs_names) <= set(kept) and "volume" in pre.obs
    np.testing.assert_allclose(pre.obs["control_fraction"], share[[truth["ids"].index(i) for i in pre.obs_names]])


@pytest.mark.parametrize("missing", ["cell_by_gene.csv", "cell_metadata.csv", "images/micron_to_mosaic_pixel_transform.csv"])
def test_merscope_folder_missing_a_file(tmp_path, missing):
    folder = tmp_path / "run" / "region_0"
    write_merscope_region(folder, n_cells=8, n_genes=4)
    (folder / missing).unlink()
    proc, raw = download(tmp_path, {"source": "merscope", "spatial": True, "path": str(folder)})
    assert proc.returncode == 2
    assert error_line(proc) == f"error: {folder}: MERSCOPE folder has no {missing}"
    assert not raw.exists()


def test_merscope_z_layer_the_folder_lacks(tmp_path):
    folder = tmp_path / "run" / "region_0"
    write_merscope_region(folder, n_cells=8, n_genes=4, z_layer=3)
    proc, raw = download(tmp_path, {"source": "merscope", "spatial": True, "path": str(folder), "z_layer": 5})
    assert proc.returncode == 2
    assert error_line(proc) == f"error: {folder}: no images/mosaic_*_z5.tif (z layers here: 3)"
    assert not raw.exists()


# --- CosMx -----------------------------------------------------------------------------------


def test_cosmx_through_download_and_preprocess(tmp_path):
    folder = tmp_path / "cosmx"
    truth = write_cosmx_folder(folder, n_per_fov=25, n_genes=12, fov_side=64)
    entry = {"source": "cosmx", "spatial": True, "path": str(folder)}
    proc, raw = download(tmp_path, entry, dataset="cx")
    assert proc.returncode == 0, proc.stderr
    adata = ad.read_h5ad(raw)
    assert list(adata.obs_names) == truth["ids"]  # <cell_ID>_<fov>; cell 0 (outside cells) is not a cell
    assert list(adata.var_names) == truth["symbols"]  # control probes and codewords are not genes
    assert list(adata.uns["control_features"]) == ["NegPrb1", "NegPrb2", "SystemControl1"]
    np.testing.assert_array_equal(adata.X.toarray(), truth["counts"])
    np.testing.assert_array_equal(adata.obs["negative_probe_counts"], truth["controls"][:, :2].sum(1))
    np.testing.assert_array_equal(adata.obs["system_control_counts"], truth["controls"][:, 2])
    np.testing.assert_array_equal(adata.obs["transcript_counts"], truth["counts"].sum(1))
    np.testing.assert_allclose(adata.obs["Area"], truth["area"])
    # global pixels, origin moved to the stitched image's corner (FOV 1's offset)
    assert adata.uns["coordinates"]["unit"] == "pixel (CosMx global)"
    np.testing.assert_allclose(adata.uns["coordinates"]["origin"], truth["offsets"][1], atol=1e-6)
    np.testing.assert_allclose(adata.obsm["spatial"], truth["xy"] - truth["offsets"][1], atol=1e-6)
    lib = adata.uns["spatial"]["cx"]
    sf = lib["scalefactors"]
    assert sf["tissue_hires_scalef"] == pytest.approx(1.0)
    assert sf["spot_diameter_fullres"] == pytest.approx(np.median(2 * np.sqrt(truth["area"] / np.pi)))
    # the two FOVs side by side, each flipped upside down as spatialdata-io places them (JPEG: tolerance)
    hires, side = lib["images"]["hires"].astype(int), truth["side"]
    assert hires.shape == (side, 2 * side, 3)
    for fov, x in ((1, 5), (2, side + 5)):
        upper, lower = truth["colours"][fov]
        np.testing.assert_allclose(hires[5, x], lower, atol=12)
        np.testing.assert_allclose(hires[side - 5, x], upper, atol=12)

    pre, qc = preprocess(tmp_path, raw, entry, dataset="cx", max_control_fraction=0.04)
    share = control_share(truth["counts"], truth["controls"])
    assert 0 < (share > 0.04).sum() < 50
    assert qc["n_cells_raw"] == 50 and qc["cells_removed"]["max_control_fraction"] == int((share > 0.04).sum())
    assert set(pre.obs_names) <= {i for i, s in zip(truth["ids"], share) if s <= 0.04} and "Area" in pre.obs


@pytest.mark.parametrize("missing, named", [
    ("Run1_S1_exprMat_file.csv", "*_exprMat_file.csv"), ("Run1_S1_metadata_file.csv", None),
    ("Run1_S1_fov_positions_file.csv", None), ("CellComposite", "CellComposite/"), ("CellLabels", "CellLabels/"),
])
def test_cosmx_folder_missing_a_file(tmp_path, missing, named):
    import shutil

    folder = tmp_path / "cosmx"
    write_cosmx_folder(folder, n_per_fov=4, n_genes=3, fov_side=16)
    target = folder / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    proc, raw = download(tmp_path, {"source": "cosmx", "spatial": True, "path": str(folder)})
    assert proc.returncode == 2
    assert error_line(proc) == f"error: {folder}: CosMx folder has no {named or missing}"
    assert not raw.exists()


def test_cosmx_fov_too_few_cells_to_place(tmp_path):
    import pandas as pd

    folder = tmp_path / "cosmx"
    write_cosmx_folder(folder, n_per_fov=6, n_genes=3, fov_side=16)
    meta_path = folder / "Run1_S1_metadata_file.csv"
    meta = pd.read_csv(meta_path)
    meta[(meta["fov"] == 1) | (meta["cell_ID"] <= 2)].to_csv(meta_path, index=False)
    proc, raw = download(tmp_path, {"source": "cosmx", "spatial": True, "path": str(folder)})
    assert proc.returncode == 2
    assert error_line(proc).startswith(f"error: {meta_path}: FOV 2 has fewer than 3 cells off one line")
    assert not raw.exists()


def test_mosaic_leaves_out_a_tile_it_cannot_place(caplog):
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Affine, Translation

    from tissuelens.datasets.sdata_convert import mosaic

    red = np.zeros((3, 10, 20), np.uint8)
    red[0] = 255
    good = Image2DModel.parse(red, dims=("c", "y", "x"), transformations={"global": Translation([5, 7], axes=("x", "y"))})
    turned = Image2DModel.parse(red, dims=("c", "y", "x"), transformations={
        "global": Affine(np.array([[0.0, -1, 50], [1, 0, 0], [0, 0, 1]]), input_axes=("x", "y"), output_axes=("x", "y"))})
    img, per_unit, origin = mosaic({"a": good, "b": turned}, "global", "here")
    assert img.shape == (10, 20, 3) and per_unit == 1.0 and list(origin) == [5, 7]
    assert (img[..., 0] == 255).all() and "image 'b' left out" in caplog.text
    assert mosaic({"b": turned}, "global", "here") is None


# --- datasets sheet --------------------------------------------------------------------------


def write_sheet(tmp_path, lines):
    path = tmp_path / "datasets.tsv"
    path.write_text("\n".join("\t".join(cells) for cells in lines) + "\n")
    return path


def test_sheet_rows_become_typed_entries(tmp_path):
    sheet = write_sheet(tmp_path, [
        ("dataset", "source", "spatial", "path", "bin_size", "synthetic.n_spots", "preprocess.min_counts", "group_key"),
        ("hd_a", "visium_hd", "true", "data/a/outs", "16", "", "20", ""),
        ("syn", "synthetic", "yes", "", "", "100", "", "1"),
    ])
    assert read_sheet(sheet) == {
        "hd_a": {"source": "visium_hd", "spatial": True, "path": "data/a/outs", "bin_size": 16,
                 "preprocess": {"min_counts": 20}},
        "syn": {"source": "synthetic", "spatial": True, "synthetic": {"n_spots": 100}, "group_key": "1"},
    }
    config = merge_sheet({"datasets_sheet": str(sheet), "datasets": {"demo": {"source": "synthetic", "spatial": True}}})
    assert list(config["datasets"]) == ["demo", "hd_a", "syn"]


@pytest.mark.parametrize("lines, message", [
    ([("dataset", "source", "spatial", "bin_sise"), ("a", "visium_hd", "true", "8")],
     "unknown column 'bin_sise' (not a dataset option)"),
    ([("dataset", "source", "spatial", "preprocess.min_count"), ("a", "synthetic", "true", "8")],
     "unknown column 'preprocess.min_count'"),
    ([("dataset", "source", "spatial"), ("a", "synthetic", "true"), ("a", "synthetic", "false")],
     "dataset 'a' appears twice (lines 2 and 3)"),
    ([("dataset", "spatial"), ("a", "true")], "no 'source' column"),
    ([("dataset", "source", "spatial"), ("a", "visium_hd", "true")], "line 2 (dataset 'a'): (top level): 'path' is required"),
    ([("dataset", "source", "spatial", "bin_size"), ("a", "visium_hd", "true", "big")], "bin_size: 'big' is not of type 'integer'"),
    ([("dataset", "source", "spatial"), ("a b", "synthetic", "true")], "line 2: dataset: 'a b' does not match"),
])
def test_bad_sheet(tmp_path, lines, message):
    sheet = write_sheet(tmp_path, lines)
    with pytest.raises(InputError, match=None) as err:
        read_sheet(sheet)
    assert str(err.value).startswith(f"{sheet}: ") and message in str(err.value)


def test_sheet_and_config_declaring_one_name(tmp_path):
    sheet = write_sheet(tmp_path, [("dataset", "source", "spatial"), ("demo", "synthetic", "true")])
    with pytest.raises(InputError, match=r"datasets.tsv: dataset 'demo' is also declared under datasets: in the config"):
        merge_sheet({"datasets_sheet": str(sheet), "datasets": {"demo": {"source": "synthetic", "spatial": True}}})


def test_platform_qc_filters_on_xenium_columns():
    import pandas as pd

    from tissuelens.preprocess import platform_filter_cells

    obs = pd.DataFrame({"transcript_counts": [5, 10, 40, 90], "control_probe_counts": [0, 0, 10, 2],
                        "control_codeword_counts": [0, 1, 0, 8]}, index=list("abcd"))
    adata = ad.AnnData(np.ones((4, 2), dtype=np.int32), obs=obs)
    report = {"cells_removed": {}}
    out = platform_filter_cells(adata, {"min_transcripts": 10, "max_control_fraction": 0.15}, report)
    # c: 10 / (40 + 10) = 0.2 > 0.15; d: 10 / 100 = 0.1
    assert list(out.obs_names) == ["b", "d"]
    assert report["cells_removed"] == {"min_transcripts": 1, "max_control_fraction": 1}
    np.testing.assert_allclose(out.obs["control_fraction"], [1 / 11, 0.1])
    # a table without the columns (Visium HD bins) is left alone
    plain = ad.AnnData(np.ones((3, 2), dtype=np.int32))
    assert platform_filter_cells(plain, {"min_transcripts": 10, "max_control_fraction": 0.1}, {"cells_removed": {}}).n_obs == 3


def test_sheet_example_runs_the_demo_and_a_second_section(tmp_path):
    """config/examples/sections.yaml: the demo from config/config.yaml plus the sheet's section (dry run)."""
    import shutil

    from helpers.workflow import REPO, plan, snakemake

    shutil.copytree(REPO / "config", tmp_path / "config")
    jobs = plan(tmp_path, "--configfile", "config/examples/sections.yaml", "--",
                "results/demo/preprocessed.h5ad", "results/section2/preprocessed.h5ad")
    assert sorted(jobs, key=str) == sorted([(rule, {"dataset": d}) for rule in ("download", "preprocess")
                                            for d in ("demo", "section2")], key=str)
    sheet = tmp_path / "config" / "examples" / "sections.tsv"
    sheet.write_text(sheet.read_text().replace("section2\t", "demo\t"))
    proc = snakemake(tmp_path, "-n", "--configfile", "config/examples/sections.yaml", check=False)
    assert proc.returncode != 0
    assert "config/examples/sections.tsv: dataset 'demo' is also declared under datasets: in the config" in proc.stdout
    assert not (tmp_path / "resources").exists()
