"""Source `cosmx`: a NanoString CosMx flat-file export through spatialdata-io.

Raw contract: one row per cell (`<cell_ID>_<fov>` as obs_name, spatialdata-io's naming; cell 0, the
transcripts outside cells, is not a cell), genes only: negative-control probes (`NegPrb*`, `Negative*`) and
system-control codewords (`SystemControl*`, `FalseCode*`; the prefixes SpatialExperimentIO's readCosmxSXE
sets aside) are summed into `obs["negative_probe_counts"]` / `obs["system_control_counts"]`, gene transcripts
into `obs["transcript_counts"]` (the preprocess platform filters read them); the metadata file's columns in
obs (`fov`, `cell_ID`, `Area` in px², stain intensities, ...); `obsm["spatial"]` = the cell centres in the
slide's global pixels (`CenterX/Y_global_px`; the µm per pixel depends on the instrument and is not in the
files); the fields of view's CellComposite images stitched on one canvas by spatialdata-io's per-FOV
transformations as the hires image.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from tissuelens.datasets.sdata_convert import attach_image, mosaic
from tissuelens.errors import InputError, why

COUNTS_SUFFIX = "_exprMat_file.csv"
CONTROLS = {"negative_probe_counts": ("NegPrb", "Negative"), "system_control_counts": ("SystemControl", "FalseCode")}
CENTRE_COLUMNS = ("fov", "cell_ID", "CenterX_local_px", "CenterY_local_px", "CenterX_global_px", "CenterY_global_px")
# spatialdata-io's table bookkeeping, not cell data
BOOKKEEPING = ("fov_labels",)


def check_folder(path: Path) -> str:
    """The export's prefix (`<prefix>_exprMat_file.csv`); InputError naming the first missing file the reader needs."""
    if not path.is_dir():
        raise InputError(f"{path}: no such directory (a CosMx flat-file export)")
    counts = sorted(p.name for p in path.glob(f"*{COUNTS_SUFFIX}"))
    if not counts:
        raise InputError(f"{path}: CosMx folder has no *{COUNTS_SUFFIX}")
    if len(counts) > 1:
        raise InputError(f"{path}: CosMx folder has several *{COUNTS_SUFFIX} ({', '.join(counts)}); one export a folder")
    prefix = counts[0][: -len(COUNTS_SUFFIX)]
    for name in (f"{prefix}_metadata_file.csv", f"{prefix}_fov_positions_file.csv", "CellComposite/", "CellLabels/"):
        if not (path / name).exists():
            raise InputError(f"{path}: CosMx folder has no {name}")
    check_fovs(path / f"{prefix}_metadata_file.csv")
    for folder in ("CellComposite", "CellLabels"):  # spatialdata-io takes each file's FOV from its name
        bad = [p.name for p in (path / folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff")
               and not re.search(r"_F\d+", p.name)]
        if bad:
            raise InputError(f"{path / folder / bad[0]}: no _F<fov> in the file name")
    return prefix


def check_fovs(meta_path: Path) -> None:
    """spatialdata-io fits each FOV's local -> global pixel transformation to its cells' centres, which fails
    (an unreadable error deep in scikit-image) for a FOV with fewer than 3 cells off one line."""
    import pandas as pd

    try:
        meta = pd.read_csv(meta_path, usecols=lambda c: c in CENTRE_COLUMNS)
    except Exception as exc:  # parser errors, a damaged file
        raise InputError(f"{meta_path}: cannot read ({why(exc)})") from None
    missing = [c for c in CENTRE_COLUMNS if c not in meta.columns]
    if missing:
        raise InputError(f"{meta_path}: no column {missing[0]}")
    bad = []
    for fov, cells in meta.groupby("fov"):
        local = cells[["CenterX_local_px", "CenterY_local_px"]].to_numpy(np.float64)
        if len(local) < 3 or np.linalg.matrix_rank(local - local.mean(axis=0)) < 2:
            bad.append(str(fov))
    if bad:
        raise InputError(f"{meta_path}: FOV {', '.join(bad[:5])} has fewer than 3 cells off one line, too few for "
                         "spatialdata-io to place it; drop its rows from the metadata and exprMat files")


def split_controls(adata):
    """Control features out of the genes, their per-cell sums into obs; gene transcripts per cell too."""
    names = adata.var_names.astype(str)
    is_control = np.zeros(adata.n_vars, dtype=bool)
    for column, prefixes in CONTROLS.items():
        mask = names.str.startswith(prefixes)
        adata.obs[column] = np.asarray(adata[:, mask].X.sum(axis=1)).ravel().astype(np.int64)
        is_control |= mask
    adata = adata[:, ~is_control].copy()
    adata.obs["transcript_counts"] = np.asarray(adata.X.sum(axis=1)).ravel().astype(np.int64)
    adata.uns["control_features"] = [str(n) for n in names[is_control]]
    return adata


def cell_diameter(adata) -> float:
    """Median cell diameter in pixels: equal-area circles of `Area` (px²), else the nearest-neighbour spacing."""
    if "Area" in adata.obs:
        return float(np.median(2 * np.sqrt(adata.obs["Area"].to_numpy(dtype=np.float64) / np.pi)))
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(adata.obsm["spatial"]).query(adata.obsm["spatial"], k=2)
    return float(np.median(dist[:, 1]))


def read_cosmx(path: str | Path, library_id: str):
    import spatialdata_io

    path = Path(path)
    prefix = check_folder(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            sdata = spatialdata_io.cosmx(path, dataset_id=prefix, transcripts=False)
        adata = sdata.tables["table"].copy()
    except Exception as exc:  # the reader raises pandas, skimage, imageio and KeyErrors for damaged files
        raise InputError(f"{path}: cannot read the CosMx folder ({why(exc)})") from None
    if adata.n_obs == 0:
        raise InputError(f"{path}: no cell of {prefix}{COUNTS_SUFFIX} is in {prefix}_metadata_file.csv")
    adata.uns.pop("spatialdata_attrs", None)
    adata.obs.drop(columns=[c for c in BOOKKEEPING if c in adata.obs], inplace=True)
    adata = split_controls(adata)
    adata.obsm["spatial"] = np.asarray(adata.obsm.pop("global"), dtype=np.float64)  # obsm['spatial'] was FOV-local
    frame = {"unit": "pixel (CosMx global)", "coordinate_system": "global", "shapes": "", "table": "table"}
    placed = mosaic(dict(sdata.images), "global", str(path)) if sdata.images else None
    origin = np.zeros(2)
    if placed is not None:
        img, per_unit, origin = placed
        attach_image(adata, library_id, img, per_unit, cell_diameter(adata),
                     f"CellComposite ({len(sdata.images)} FOVs)", str(path))
        frame["image"] = "CellComposite"
    adata.obsm["spatial"] = adata.obsm["spatial"] - origin
    frame["origin"] = [float(v) for v in origin]
    adata.uns["coordinates"] = frame
    return adata
