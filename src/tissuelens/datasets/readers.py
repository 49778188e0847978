"""Readers for local files: .h5ad, a Space Ranger (10x Visium) output folder, a 10x .h5 matrix."""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from tissuelens.errors import InputError, why
from tissuelens.io import read_h5ad

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == HDF5_MAGIC


def read_local(path: str | Path) -> ad.AnnData:
    """Read whatever `path` holds; one clear InputError if it is missing or of an unknown kind."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        return read_visium_folder(path)
    if not _is_hdf5(path):
        raise InputError(f"{path}: not an .h5ad or 10x .h5 file (not HDF5)")
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            is_10x = "matrix" in fh or any(isinstance(fh[k], h5py.Group) and "genes" in fh[k] for k in fh)
            is_h5ad = "X" in fh and "obs" in fh and "var" in fh
    except (OSError, KeyError, ValueError) as exc:  # truncated or partly written HDF5
        raise InputError(f"{path}: damaged HDF5 file ({why(exc)})") from None
    if is_h5ad:
        return read_h5ad(path)
    if is_10x:
        return read_10x_h5(path)
    raise InputError(f"{path}: HDF5 file is neither AnnData (.h5ad) nor a 10x feature-barcode matrix")


def read_10x_h5(path: Path) -> ad.AnnData:
    import scanpy as sc

    try:
        adata = sc.read_10x_h5(path, gex_only=True)
    except Exception as exc:  # scanpy raises several types for malformed files
        raise InputError(f"{path}: cannot read as a 10x .h5 matrix ({exc})") from None
    adata.var_names_make_unique()
    return adata


def read_visium_folder(path: Path) -> ad.AnnData:
    """A Space Ranger `outs/` folder: counts .h5 + `spatial/` (positions, scalefactors, images)."""
    import squidpy as sq

    counts = next((p for p in ("filtered_feature_bc_matrix.h5", "raw_feature_bc_matrix.h5") if (path / p).exists()), None)
    if counts is None:
        raise InputError(f"{path}: folder has no filtered_feature_bc_matrix.h5 (not a Space Ranger output)")
    if not (path / "spatial").is_dir():
        raise InputError(f"{path}: Space Ranger folder has no spatial/ subfolder")
    positions = [p for p in ("tissue_positions.csv", "tissue_positions_list.csv") if (path / "spatial" / p).exists()]
    if not positions:
        raise InputError(f"{path}/spatial: no tissue_positions.csv or tissue_positions_list.csv")
    try:
        adata = sq.read.visium(path, counts_file=counts)
    except Exception as exc:
        raise InputError(f"{path}: cannot read the Visium folder ({exc})") from None
    adata.var_names_make_unique()
    return adata
