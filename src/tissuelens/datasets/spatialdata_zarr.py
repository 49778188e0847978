"""Source `spatialdata`: a SpatialData `.zarr` store (scverse's common format), one table of it.

Options: `table` (which table; needed when there are several), `image` (the image element placed under
the spots, or {region: image} for regions on their own slides; none when unset), `shapes` (the spot/cell
geometry; default the shapes the table annotates: with several regions, each row's own, and the region column
becomes the section_key). Coordinates keep the unit of
the chosen coordinate system (see `sdata_convert`).
"""

from __future__ import annotations

from pathlib import Path

from tissuelens.datasets.sdata_convert import to_anndata
from tissuelens.errors import InputError, why


def read_spatialdata(path: str | Path, library_id: str, table: str | None = None, image: str | dict | None = None,
                     shapes: str | None = None):
    import spatialdata

    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: no such SpatialData .zarr directory")
    if not (path / "zarr.json").exists() and not (path / ".zgroup").exists():
        raise InputError(f"{path}: not a zarr store (no zarr.json or .zgroup)")
    try:
        sdata = spatialdata.read_zarr(path)
    except Exception as exc:  # zarr, ome-zarr and parquet raise many types for damaged stores
        raise InputError(f"{path}: cannot read as SpatialData ({why(exc)})") from None
    return to_anndata(sdata, str(path), library_id, table=table, image=image, shapes=shapes,
                      unit="the zarr's coordinate system units", keep_area=True)
