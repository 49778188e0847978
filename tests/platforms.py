"""Write the smallest valid output folder of each spatial platform for tests (the files spatialdata-io's
readers open, with a few cells and genes), and a small SpatialData zarr."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image
from tenx import write_10x_h5


def counts_matrix(n_obs: int, n_genes: int, seed: int = 0) -> np.ndarray:
    """Poisson counts with a spatial gradient so that every row and column holds some counts."""
    rng = np.random.default_rng(seed)
    rates = rng.gamma(2.0, 1.5, size=(n_obs, n_genes)) + np.linspace(0.5, 3.0, n_obs)[:, None]
    return rng.poisson(rates).astype(np.int32)


def gene_table(n_genes: int) -> tuple[list[str], list[str]]:
    return [f"ENSG{i:011d}" for i in range(1, n_genes + 1)], [f"GENE{i}" for i in range(1, n_genes + 1)]


def he_png(path: Path, side: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal([200, 150, 190], 20, size=(side, side, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return img


def write_visium_hd_folder(outs: Path, grid: int = 20, n_genes: int = 40, bin_sizes=(16,), microns_per_pixel=0.5,
                           hires_scalef=0.1, seed=0) -> dict:
    """A Space Ranger 3 Visium HD `outs/` folder: feature_slice.h5, spatial/ (scalefactors, hires and lowres
    images) and binned_outputs/square_XXXum/ (filtered_feature_bc_matrix.h5, spatial/scalefactors_json.json,
    spatial/tissue_positions.parquet) for each bin size, on a `grid` x `grid` square of bins."""
    outs.mkdir(parents=True)
    ids, symbols = gene_table(n_genes)
    with h5py.File(outs / "feature_slice.h5", "w") as fh:  # the reader takes the layout version from here
        fh.attrs["metadata_json"] = json.dumps({"hd_layout_json": json.dumps({"file_format": "1.0"})})
    spot_2um = 2.0 / microns_per_pixel
    sizes = {"tissue_hires_scalef": hires_scalef, "tissue_lowres_scalef": hires_scalef / 4,
             "spot_diameter_fullres": spot_2um, "bin_size_um": 2.0, "microns_per_pixel": microns_per_pixel,
             "fiducial_diameter_fullres": 10 * spot_2um, "regist_target_img_scalef": hires_scalef}
    (outs / "spatial").mkdir()
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(sizes))
    expected = {}
    largest = max(bin_sizes)
    # the tissue spans grid x grid bins of the largest size; the hires image covers it with a margin
    side_px = grid * largest / microns_per_pixel
    he_png(outs / "spatial" / "tissue_hires_image.png", int(np.ceil(side_px * 1.1 * hires_scalef)), seed)
    he_png(outs / "spatial" / "tissue_lowres_image.png", int(np.ceil(side_px * 1.1 * hires_scalef / 4)), seed)
    for b in bin_sizes:
        n_side = grid * largest // b
        rows, cols = np.divmod(np.arange(n_side * n_side), n_side)
        barcodes = [f"s_{b:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols)]
        counts = counts_matrix(len(barcodes), n_genes, seed + b)
        folder = outs / "binned_outputs" / f"square_{b:03d}um"
        (folder / "spatial").mkdir(parents=True)
        write_10x_h5(folder / "filtered_feature_bc_matrix.h5", counts, barcodes, ids, symbols)
        bin_px = b / microns_per_pixel
        (folder / "spatial" / "scalefactors_json.json").write_text(
            json.dumps({**sizes, "spot_diameter_fullres": bin_px, "bin_size_um": float(b)}))
        x = (cols + 0.5) * bin_px + 0.05 * side_px
        y = (rows + 0.5) * bin_px + 0.05 * side_px
        pd.DataFrame({"barcode": barcodes, "in_tissue": 1, "array_row": rows, "array_col": cols,
                      "pxl_row_in_fullres": y, "pxl_col_in_fullres": x}).to_parquet(
            folder / "spatial" / "tissue_positions.parquet", index=False)
        expected[b] = {"barcodes": barcodes, "counts": counts, "xy": np.column_stack([x, y])}
    expected["symbols"] = symbols
    expected["ids"] = ids
    return expected


def write_spatialdata_zarr(path: Path, n_cells: int = 60, n_genes: int = 30, um_per_px: float = 0.5, seed=0) -> dict:
    """A SpatialData zarr: table `cells` annotating circles `cell_circles` (µm, coordinate system `global`)
    and an RGB image `he` whose pixels are `um_per_px` µm, shifted by (10, 20) µm from the origin."""
    import anndata as ad
    import geopandas as gpd
    import scipy.sparse as sp
    import shapely
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale, Sequence, Translation

    rng = np.random.default_rng(seed)
    xy = rng.uniform(20, 80, size=(n_cells, 2)) + [10, 20]
    radius = rng.uniform(3, 6, size=n_cells)
    ids = [f"cell{i:03d}" for i in range(n_cells)]
    circles = ShapesModel.parse(gpd.GeoDataFrame({"radius": radius}, geometry=shapely.points(xy), index=ids),
                                transformations={"global": Identity()})
    counts = counts_matrix(n_cells, n_genes, seed)
    symbols = gene_table(n_genes)[1]
    table = ad.AnnData(sp.csr_matrix(counts.astype(np.float32)),
                       obs=pd.DataFrame({"cell_id": ids, "region": pd.Categorical(["cell_circles"] * n_cells),
                                         "celltype": rng.choice(["a", "b"], n_cells)}, index=[str(i) for i in range(n_cells)]),
                       var=pd.DataFrame(index=symbols))
    table = TableModel.parse(table, region="cell_circles", region_key="region", instance_key="cell_id")
    side = int(100 / um_per_px)
    img = np.clip(rng.normal(180, 30, size=(3, side, side)), 0, 255).astype(np.uint8)
    image = Image2DModel.parse(img, dims=("c", "y", "x"),
                               transformations={"global": Sequence([Scale([um_per_px, um_per_px], axes=("x", "y")),
                                                                    Translation([10, 20], axes=("x", "y"))])})
    SpatialData(images={"he": image}, shapes={"cell_circles": circles}, tables={"cells": table}).write(path)
    return {"ids": ids, "xy": xy, "radius": radius, "counts": counts, "symbols": symbols, "image": img}


def write_xenium_folder(path: Path, n_cells: int = 50, n_genes: int = 20, pixel_size: float = 0.2125, seed=0) -> dict:
    """A Xenium Onboard Analysis 1.0 output folder: experiment.xenium, cell_feature_matrix.h5 (genes and
    negative-control probes), cells.parquet (centroids in µm, QC counts, areas), cells.zarr.zip (the
    reader opens it; 1.0 keeps only cell summaries there) and morphology_focus.ome.tif (DAPI, uint16)."""
    import tifffile
    import zarr

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    (path / "experiment.xenium").write_text(json.dumps({"pixel_size": pixel_size, "analysis_sw_version": "xenium-1.0.2"}))
    cell_ids = [str(i + 1) for i in range(n_cells)]
    counts = counts_matrix(n_cells, n_genes, seed)
    controls = rng.poisson(0.3, size=(n_cells, 2)).astype(np.int32)
    ids, symbols = gene_table(n_genes)
    write_10x_h5(path / "cell_feature_matrix.h5", np.hstack([counts, controls]), cell_ids,
                 ids + ["NegControlProbe_00001", "NegControlProbe_00002"],
                 symbols + ["NegControlProbe_00001", "NegControlProbe_00002"],
                 feature_types=["Gene Expression"] * n_genes + ["Negative Control Probe"] * 2)
    side_um = 200.0
    xy = rng.uniform(10, side_um - 10, size=(n_cells, 2))
    area = rng.uniform(40, 120, size=n_cells)
    cells = pd.DataFrame({"cell_id": np.arange(1, n_cells + 1), "x_centroid": xy[:, 0], "y_centroid": xy[:, 1],
                          "transcript_counts": counts.sum(1), "control_probe_counts": controls.sum(1),
                          "control_codeword_counts": 0, "total_counts": counts.sum(1) + controls.sum(1),
                          "cell_area": area, "nucleus_area": area / 3})
    cells.to_parquet(path / "cells.parquet", index=False)
    store = zarr.storage.ZipStore(path / "cells.zarr.zip", mode="w")
    zarr.open_group(store, mode="w").create_array("cell_summary", data=np.zeros((n_cells, 7)))
    store.close()
    side_px = int(side_um / pixel_size)
    dapi = rng.integers(100, 4000, size=(side_px, side_px), dtype=np.uint16)
    tifffile.imwrite(path / "morphology_focus.ome.tif", dapi)
    return {"cell_ids": cell_ids, "counts": counts, "controls": controls, "xy": xy, "area": area, "symbols": symbols}
