"""Sources read through spatialdata-io: a SpatialData zarr and the platforms' output folders.

Each has its own small module; this one maps a dataset entry's source and options to it.
"""

from __future__ import annotations

PLATFORMS = ("spatialdata", "visium_hd", "xenium", "merscope", "cosmx")


def read_platform(source: str, dataset: str, entry: dict):
    path = entry["path"]
    if source == "spatialdata":
        from tissuelens.datasets.spatialdata_zarr import read_spatialdata

        return read_spatialdata(path, dataset, entry.get("table"), entry.get("image"), entry.get("shapes"))
    if source == "visium_hd":
        from tissuelens.datasets.visium_hd import read_visium_hd

        return read_visium_hd(path, entry.get("bin_size"), dataset)
    if source == "xenium":
        from tissuelens.datasets.xenium import read_xenium

        return read_xenium(path, dataset)
    if source == "merscope":
        from tissuelens.datasets.merscope import read_merscope

        return read_merscope(path, dataset, entry.get("z_layer"))
    from tissuelens.datasets.cosmx import read_cosmx

    return read_cosmx(path, dataset)
