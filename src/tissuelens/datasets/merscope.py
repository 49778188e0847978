"""Source `merscope`: a Vizgen MERSCOPE region folder (`<run>/region_N/`) through spatialdata-io.

Raw contract: one row per cell (EntityID as obs_name), genes only: the `Blank-*` barcodes (spatialdata-io
splits them off) are summed into `obs["blank_counts"]`, gene transcripts into `obs["transcript_counts"]`
(the preprocess platform filters read both); cell_metadata.csv's columns in obs (`fov`, `volume` in µm³,
bounds, and what VPT adds); `obsm["spatial"]` = Vizgen's cell centres (`center_x`, `center_y`) in µm; the
DAPI mosaic of one z layer (grey) as the hires image, placed by micron_to_mosaic_pixel_transform.csv.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np

from tissuelens.datasets.sdata_convert import attach_image, image_levels, tissue_image
from tissuelens.errors import InputError, why

log = logging.getLogger(__name__)
REQUIRED = ("cell_by_gene.csv", "cell_metadata.csv", "images/micron_to_mosaic_pixel_transform.csv")
DEFAULT_Z_LAYER = 3  # spatialdata-io's default: the middle of MERSCOPE's 7 z planes
IMAGE_CHANNEL = "DAPI"
# spatialdata-io's table bookkeeping (constant per region), not cell data
BOOKKEEPING = ("region", "slide", "dataset_id", "cells_region", "EntityID")


def check_folder(path: Path, z_layer: int) -> bool:
    """InputError naming the first file the reader needs that is missing; whether there is a mosaic of `z_layer`."""
    if not path.is_dir():
        raise InputError(f"{path}: no such directory (a MERSCOPE region folder)")
    for name in REQUIRED:
        if not (path / name).exists():
            raise InputError(f"{path}: MERSCOPE folder has no {name}")
    layers = sorted({int(m.group(1)) for p in (path / "images").glob("mosaic_*_z*.tif")
                     if (m := re.search(r"_z([0-9]+)\.tif$", p.name))})
    if layers and z_layer not in layers:
        raise InputError(f"{path}: no images/mosaic_*_z{z_layer}.tif (z layers here: {', '.join(map(str, layers))})")
    if not layers:
        log.info("%s: no images/mosaic_*_z*.tif; no tissue image", path)
    return bool(layers)


def cell_diameter(obs) -> float:
    """Median cell diameter in µm: the mean side of the cells' bounding boxes, else the equal-volume sphere."""
    if {"min_x", "max_x", "min_y", "max_y"} <= set(obs.columns):
        sides = (obs["max_x"] - obs["min_x"] + obs["max_y"] - obs["min_y"]).to_numpy(dtype=np.float64) / 2
        return float(np.median(sides))
    return float(np.median(np.cbrt(6 * obs["volume"].to_numpy(dtype=np.float64) / np.pi)))


def read_merscope(path: str | Path, library_id: str, z_layer: int | None = None):
    import spatialdata_io
    from spatialdata.transformations import Affine, set_transformation

    path = Path(path)
    z_layer = DEFAULT_Z_LAYER if z_layer is None else int(z_layer)
    has_image = check_folder(path, z_layer)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)  # the table annotates cell polygons, which are not read
            sdata = spatialdata_io.merscope(path, z_layers=z_layer, transcripts=False, cells_boundaries=False,
                                            cells_table=True, mosaic_images=has_image)
        adata = sdata.tables["table"].copy()
    except Exception as exc:  # the reader raises pandas, anndata, tifffile and KeyErrors for damaged files
        raise InputError(f"{path}: cannot read the MERSCOPE folder ({why(exc)})") from None
    adata.uns.pop("spatialdata_attrs", None)
    adata.obs_names = adata.obs_names.astype(str)
    blank = adata.obsm.pop("blank")
    adata.obs["transcript_counts"] = np.asarray(adata.X.sum(axis=1)).ravel().astype(np.int64)
    adata.obs["blank_counts"] = blank.to_numpy().sum(axis=1).astype(np.int64)
    adata.obs.drop(columns=[c for c in BOOKKEEPING if c in adata.obs], inplace=True)
    coords = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    adata.uns["control_features"] = [str(c) for c in blank.columns]
    frame = {"unit": "micrometre", "coordinate_system": "micron", "shapes": "", "table": "table"}
    origin = np.zeros(2)
    if has_image:
        name = next(iter(sdata.images))
        image_el = sdata.images[name]  # in mosaic pixels ('global' is the identity)
        to_px = np.genfromtxt(path / "images" / "micron_to_mosaic_pixel_transform.csv")
        set_transformation(image_el, Affine(np.linalg.inv(to_px), input_axes=("x", "y"), output_axes=("x", "y")),
                           "micron")
        channels = [str(c) for c in image_levels(image_el)[0].coords["c"].values]
        channel = IMAGE_CHANNEL if IMAGE_CHANNEL in channels else sorted(channels)[0]  # the reader's order varies
        img, per_unit, origin = tissue_image(image_el, "micron", str(path), channel=channel)
        attach_image(adata, library_id, img, per_unit, cell_diameter(adata.obs), f"{name} ({channel})", str(path))
        frame["image"] = f"{name} ({channel})"
    adata.obsm["spatial"] = coords - origin
    frame["origin"] = [float(v) for v in origin]
    adata.uns["coordinates"] = frame
    return adata
