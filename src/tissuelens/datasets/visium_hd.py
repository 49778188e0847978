"""Source `visium_hd`: a Space Ranger Visium HD `outs/` folder, one bin size, through spatialdata-io.

Raw contract: one row per bin (barcode as obs_name; `in_tissue`, `array_row`, `array_col` in obs),
`obsm["spatial"]` in full-resolution image pixels (Space Ranger's `pxl_col/row_in_fullres`, bin centres),
the hires H&E image with `tissue_hires_scalef`, `spot_diameter_fullres` = the bin's side in pixels and
`microns_per_pixel` from the bin's scalefactors_json.json.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from tissuelens.datasets.sdata_convert import to_anndata
from tissuelens.errors import InputError, why

DEFAULT_BIN_SIZE = 8  # Space Ranger's and spatialdata-io's default bin


def bin_folder(path: Path, bin_size: int) -> Path:
    """The folder of one bin size; InputError naming the missing file or the bin sizes the folder has."""
    if not path.is_dir():
        raise InputError(f"{path}: no such directory (a Visium HD Space Ranger outs/ folder)")
    if not (path / "feature_slice.h5").exists() and not list(path.glob("*_feature_slice.h5")):
        raise InputError(f"{path}: Visium HD folder has no feature_slice.h5")
    binned = path / "binned_outputs"
    if not binned.is_dir():
        raise InputError(f"{path}: Visium HD folder has no binned_outputs/ subfolder")
    have = sorted(int(p.name[7:10]) for p in binned.glob("square_[0-9][0-9][0-9]um") if p.is_dir())
    folder = binned / f"square_{bin_size:03d}um"
    if bin_size not in have:
        raise InputError(f"{path}: no {bin_size} µm bins (binned_outputs/{folder.name} is missing; bin sizes here: "
                         f"{', '.join(map(str, have)) or 'none'})")
    for name in ("filtered_feature_bc_matrix.h5", "spatial/scalefactors_json.json", "spatial/tissue_positions.parquet"):
        if not (folder / name).exists():
            raise InputError(f"{folder}: missing {name}")
    return folder


def read_visium_hd(path: str | Path, bin_size: int | None, library_id: str):
    import spatialdata_io

    path = Path(path)
    bin_size = DEFAULT_BIN_SIZE if bin_size is None else int(bin_size)
    folder = bin_folder(path, bin_size)
    try:
        scalefactors = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
        bin_px = float(scalefactors["spot_diameter_fullres"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # an unprefixed feature_slice.h5 leaves the elements' prefix to us; a prefixed one names it
            dataset_id = library_id if (path / "feature_slice.h5").exists() else None
            sdata = spatialdata_io.visium_hd(path, dataset_id=dataset_id, bin_size=bin_size,
                                             load_segmentations_only=False, load_all_images=False)
    except InputError:
        raise
    except Exception as exc:  # the reader raises assertions, KeyErrors, h5py and parquet errors
        raise InputError(f"{path}: cannot read the Visium HD folder ({why(exc)})") from None
    table = f"square_{bin_size:03d}um"
    image = next((name for name in sdata.images if name.endswith("_hires_image")), None)
    adata = to_anndata(sdata, str(path), library_id, table=table, image=image, unit="pixel (full resolution)",
                       spot_diameter=bin_px)
    adata.obs.drop(columns=[c for c in ("location_id",) if c in adata.obs], inplace=True)
    if "spatial" in adata.uns:
        adata.uns["spatial"][library_id]["scalefactors"].update(
            bin_size_um=float(bin_size), microns_per_pixel=float(scalefactors.get("microns_per_pixel", 0.0)))
    adata.uns["coordinates"]["microns_per_unit"] = float(scalefactors.get("microns_per_pixel", 0.0))
    return adata
