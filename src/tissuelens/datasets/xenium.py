"""Source `xenium`: a 10x Xenium (Onboard Analysis / Xenium Ranger) output folder through spatialdata-io.

Raw contract: one row per cell (cell_id as obs_name), gene-expression features only (control probes and
codewords are counted in cells.parquet, not kept as genes), `obsm["spatial"]` = cell centroids in µm,
cells.parquet's QC columns in obs (`transcript_counts`, `control_probe_counts`, `control_codeword_counts`,
`total_counts`, `cell_area`, `nucleus_area`, ...), and the DAPI morphology image (first channel, stretched
to grey) as the hires image.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from tissuelens.datasets.sdata_convert import to_anndata
from tissuelens.errors import InputError, why

REQUIRED = ("experiment.xenium", "cell_feature_matrix.h5", "cells.parquet", "cells.zarr.zip")


def check_folder(path: Path) -> bool:
    """InputError naming the first file the reader needs that is missing; whether there is a morphology image."""
    if not path.is_dir():
        raise InputError(f"{path}: no such directory (a Xenium output folder)")
    for name in REQUIRED:
        if not (path / name).exists():
            raise InputError(f"{path}: Xenium folder has no {name}")
    return (path / "morphology_focus.ome.tif").exists() or (path / "morphology_focus").is_dir()


def read_xenium(path: str | Path, library_id: str):
    import spatialdata_io

    path = Path(path)
    has_image = check_folder(path)
    try:
        pixel_size = float(json.loads((path / "experiment.xenium").read_text())["pixel_size"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sdata = spatialdata_io.xenium(
                path, cells_boundaries=False, nucleus_boundaries=False, cells_as_circles=True, cells_labels=False,
                nucleus_labels=False, transcripts=False, morphology_mip=False, morphology_focus=has_image,
                aligned_images=False)
    except Exception as exc:  # the reader raises assertions, KeyErrors, zarr, h5py and parquet errors
        raise InputError(f"{path}: cannot read the Xenium folder ({why(exc)})") from None
    # the reader's global coordinate system is morphology-image pixels: x pixel_size = µm
    return to_anndata(sdata, str(path), library_id, table="table", shapes="cell_circles",
                      image="morphology_focus" if has_image else None, unit="micrometre", unit_scale=pixel_size,
                      keep_area=False)
