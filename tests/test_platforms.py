"""Sources read through spatialdata-io (Visium HD, SpatialData zarr, ...) and the datasets sheet: each on
the smallest valid output folder of its platform, written here, through download -> preprocess; bad input."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
from conftest import error_line, run_script
from platforms import write_spatialdata_zarr, write_visium_hd_folder, write_xenium_folder

from tissuelens.config import step_defaults
from tissuelens.errors import InputError
from tissuelens.sheet import merge_sheet, read_sheet


def download(tmp_path, entry, dataset="d"):
    out = tmp_path / "resources" / dataset / "raw.h5ad"
    proc = run_script("download", "--dataset", dataset, "--entry", json.dumps(entry), "--seed", 0, "--out", out)
    return proc, out


def preprocess(tmp_path, raw, entry, dataset="d"):
    out, qc = tmp_path / "results" / dataset / "preprocessed.h5ad", tmp_path / "results" / dataset / "qc.json"
    settings = {**step_defaults("preprocess"), "min_counts": 5, "min_genes": 3, "n_top_genes": 20}
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

    from scaleout import REPO, plan, snakemake

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
