"""Write the smallest valid output folder of each spatial platform for tests (the files spatialdata-io's
readers open, with a few cells and genes), and a small SpatialData zarr."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image
from helpers.tenx import write_10x_h5


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


def write_merscope_region(path: Path, n_cells: int = 40, n_genes: int = 15, n_blanks: int = 2, um_per_px: float = 0.5,
                          shift_um=(-20.0, -10.0), z_layer: int = 3, seed=0) -> dict:
    """A MERSCOPE region folder (`<run>/region_0/`): cell_by_gene.csv (genes and Blank-* barcodes),
    cell_metadata.csv (EntityID, fov, volume, centres and bounds in µm, ...) and images/ with
    micron_to_mosaic_pixel_transform.csv and DAPI/PolyT mosaics (uint16) of one z layer."""
    import tifffile

    rng = np.random.default_rng(seed)
    (path / "images").mkdir(parents=True)
    ids = [str(1_000_000_000 + 17 * i) for i in range(n_cells)]  # Vizgen's EntityIDs are large integers
    counts = counts_matrix(n_cells, n_genes, seed)
    blanks = rng.poisson(0.4, size=(n_cells, n_blanks)).astype(np.int32)
    symbols = gene_table(n_genes)[1]
    blank_names = [f"Blank-{i}" for i in range(n_blanks)]
    table = pd.DataFrame(np.hstack([counts, blanks]), columns=symbols + blank_names)
    table.insert(0, "cell", ids)
    table.to_csv(path / "cell_by_gene.csv", index=False)
    side_um = 150.0
    xy = rng.uniform(10, side_um - 10, size=(n_cells, 2)) + shift_um
    volume = rng.uniform(200, 900, size=n_cells)
    radius = rng.uniform(3, 6, size=n_cells)
    meta = pd.DataFrame({"EntityID": ids, "fov": rng.integers(0, 4, n_cells), "volume": volume,
                         "center_x": xy[:, 0], "center_y": xy[:, 1], "min_x": xy[:, 0] - radius,
                         "min_y": xy[:, 1] - radius, "max_x": xy[:, 0] + radius, "max_y": xy[:, 1] + radius,
                         "anisotropy": rng.uniform(1, 2, n_cells), "transcript_count": counts.sum(1),
                         "perimeter_area_ratio": rng.uniform(0.2, 0.6, n_cells), "solidity": 0.9})
    meta.to_csv(path / "cell_metadata.csv", index=False)
    # µm -> mosaic pixels: the mosaic's corner sits at shift_um
    px_per_um = 1 / um_per_px
    transform = np.array([[px_per_um, 0, -shift_um[0] * px_per_um], [0, px_per_um, -shift_um[1] * px_per_um], [0, 0, 1]])
    np.savetxt(path / "images" / "micron_to_mosaic_pixel_transform.csv", transform, delimiter=" ")
    side_px = int(side_um * px_per_um)
    dapi = rng.integers(100, 4000, size=(side_px, side_px), dtype=np.uint16)
    dapi[: side_px // 2] //= 4  # a darker upper half, to see the channel and the orientation
    tifffile.imwrite(path / "images" / f"mosaic_DAPI_z{z_layer}.tif", dapi)
    tifffile.imwrite(path / "images" / f"mosaic_PolyT_z{z_layer}.tif", np.full((side_px, side_px), 7, np.uint16))
    return {"ids": ids, "counts": counts, "blanks": blanks, "xy": xy, "volume": volume, "symbols": symbols,
            "dapi": dapi, "shift_um": np.asarray(shift_um), "px_per_um": px_per_um}


def write_cosmx_folder(path: Path, n_per_fov: int = 25, n_genes: int = 12, fov_side: int = 64, seed=0,
                       prefix: str = "Run1_S1") -> dict:
    """CosMx flat files of two FOVs: <prefix>_exprMat_file.csv (fov, cell_ID, genes, NegPrb*, SystemControl*;
    cell 0 = transcripts outside cells), <prefix>_metadata_file.csv (Area, local and global centres in px,
    stain intensities), <prefix>_fov_positions_file.csv, CellComposite/*_F00N.jpg (RGB) and
    CellLabels/*_F00N.tif. An image row r is local y = side - 1 - r (spatialdata-io flips the images);
    global = local + the FOV's offset."""
    import tifffile

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    (path / "CellComposite").mkdir()
    (path / "CellLabels").mkdir()
    symbols = gene_table(n_genes)[1]
    controls = ["NegPrb1", "NegPrb2", "SystemControl1"]
    offsets = {1: np.array([1000.0, 2000.0]), 2: np.array([1000.0 + fov_side, 2000.0])}
    colours = {1: ([200, 40, 40], [40, 200, 40]), 2: ([40, 40, 200], [200, 200, 40])}  # (upper, lower) halves
    expr, meta, truth_rows = [], [], []
    for fov, offset in offsets.items():
        counts = counts_matrix(n_per_fov, n_genes, seed + fov)
        ctrl = rng.poisson(0.5, size=(n_per_fov, len(controls))).astype(np.int32)
        local = rng.uniform(4, fov_side - 4, size=(n_per_fov, 2))
        area = rng.uniform(30, 90, size=n_per_fov)
        background = rng.poisson(2, size=n_genes + len(controls))
        expr.append([fov, 0, *background])
        for i in range(n_per_fov):
            expr.append([fov, i + 1, *counts[i], *ctrl[i]])
            g = local[i] + offset
            meta.append({"fov": fov, "cell_ID": i + 1, "Area": area[i], "AspectRatio": 1.2,
                         "CenterX_local_px": local[i, 0], "CenterY_local_px": local[i, 1],
                         "CenterX_global_px": g[0], "CenterY_global_px": g[1], "Width": 8, "Height": 9,
                         "Mean.DAPI": 500.0, "Max.DAPI": 900})
            truth_rows.append((f"{i + 1}_{fov}", counts[i], ctrl[i], g, area[i]))
        upper, lower = colours[fov]
        img = np.empty((fov_side, fov_side, 3), np.uint8)
        img[: fov_side // 2], img[fov_side // 2:] = upper, lower
        Image.fromarray(img).save(path / "CellComposite" / f"CellComposite_F{fov:03d}.jpg", quality=95)
        tifffile.imwrite(path / "CellLabels" / f"CellLabels_F{fov:03d}.tif", np.zeros((fov_side, fov_side), np.uint16))
    pd.DataFrame(expr, columns=["fov", "cell_ID", *symbols, *controls]).to_csv(
        path / f"{prefix}_exprMat_file.csv", index=False)
    pd.DataFrame(meta).to_csv(path / f"{prefix}_metadata_file.csv", index=False)
    pd.DataFrame({"fov": list(offsets), "x_global_px": [o[0] for o in offsets.values()],
                  "y_global_px": [o[1] for o in offsets.values()]}).to_csv(path / f"{prefix}_fov_positions_file.csv",
                                                                          index=False)
    ids, counts, ctrl, xy, area = zip(*truth_rows)
    return {"ids": list(ids), "counts": np.array(counts), "controls": np.array(ctrl), "xy": np.array(xy),
            "area": np.array(area), "symbols": symbols, "offsets": offsets, "colours": colours, "side": fov_side,
            "prefix": prefix}


def write_spatialdata_regions(path: Path, n_per_region: int = 30, n_genes: int = 20, systems=("global", "global"),
                              third_region: bool = False, images: bool = False, seed=0) -> dict:
    """A SpatialData zarr of two sections: circles `s1` and `s2` on overlapping coordinates (the same cell ids
    in both), each in its coordinate system of `systems` (s2 shifted by (5, -3) into it), and one table `cells`
    annotating both (region_key `region`, instance_key `cell_id`). `third_region`: the table also has rows of a
    region `s3` with no shapes element. `images`: each region's own slide, RGB images `he_s1` (all red) and
    `he_s2` (all blue), 64 x 64 px of 1 unit each, in its region's system, with corners at (-2, -1) and (1, -6)."""
    import anndata as ad
    import geopandas as gpd
    import scipy.sparse as sp
    import shapely
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel
    from spatialdata.transformations import Identity, Translation

    rng = np.random.default_rng(seed)
    ids = [f"cell{i:03d}" for i in range(n_per_region)]
    regions = ["s1", "s2", "s3"] if third_region else ["s1", "s2"]
    shift = {"s1": Identity(), "s2": Translation([5, -3], axes=("x", "y"))}
    shapes, xy = {}, {}
    for name, system in zip(("s1", "s2"), systems):
        xy[name] = rng.uniform(0, 50, size=(n_per_region, 2))  # both sections on the same stretch of coordinates
        gdf = gpd.GeoDataFrame({"radius": rng.uniform(2, 4, n_per_region)}, geometry=shapely.points(xy[name]), index=ids)
        shapes[name] = ShapesModel.parse(gdf, transformations={system: shift[name]})
    xy["s2"] = xy["s2"] + [5, -3]  # in the coordinate system
    n = n_per_region * len(regions)
    obs = pd.DataFrame({"cell_id": ids * len(regions), "region": pd.Categorical(np.repeat(regions, n_per_region)),
                        "celltype": rng.choice(["a", "b"], n)}, index=[str(i) for i in range(n)])
    order = rng.permutation(n)  # the table's rows interleave the regions
    counts = counts_matrix(n, n_genes, seed)
    table = ad.AnnData(sp.csr_matrix(counts[order].astype(np.float32)), obs=obs.iloc[order].reset_index(drop=True),
                       var=pd.DataFrame(index=gene_table(n_genes)[1]))
    table.obs_names = [str(i) for i in range(n)]
    table = TableModel.parse(table, region=regions, region_key="region", instance_key="cell_id")
    slides, corners = {}, {"s1": (-2.0, -1.0), "s2": (1.0, -6.0)}
    if images:
        from spatialdata.models import Image2DModel

        for channel, (name, system) in enumerate(zip(("s1", "s2"), systems)):
            pixels = np.zeros((3, 64, 64), dtype=np.uint8)
            pixels[2 * channel] = 255  # s1 red, s2 blue
            corner = Translation(list(corners[name]), axes=("x", "y"))
            slides[f"he_{name}"] = Image2DModel.parse(pixels, dims=("c", "y", "x"), transformations={system: corner})
    SpatialData(images=slides, shapes=shapes, tables={"cells": table}).write(path)
    return {"xy": xy, "region": obs["region"].astype(str).to_numpy()[order],
            "cell_id": np.array(ids * len(regions))[order], "corners": corners}
