"""A SpatialData object (one table, its shapes, an image) -> AnnData in the raw contract's layout.

Coordinates are the centroids of the table's shapes in one coordinate system (`global` when there is
one, else the system where the shapes are untransformed), so they keep that system's unit (micrometres
for Xenium/MERSCOPE/CosMx, full-resolution pixels for Visium HD). The image is stored the scanpy/squidpy
way, `uns["spatial"][library]["images"]["hires"]` with `tissue_hires_scalef` = image pixels per
coordinate unit, which Loki's patches and the report's tissue plots read. An image whose pixel grid is
offset from the coordinates' origin moves the coordinates' origin to the image corner (recorded in
`uns["coordinates"]["origin"]`): the scanpy convention has no offset.

A table that annotates several shapes elements (several sections or Xenium/MERSCOPE regions saved in one
object) becomes one AnnData: each row placed by its own region's shapes in one coordinate system they all
share, obs[region_key] kept as the section column and offered to the contract as the dataset's section_key
(tissuelens.datasets.contract.ENTRY_DEFAULTS), so no spatial step links cells of two regions. Regions on
different slides name one image each (`image: {region: image}`): each is then placed in a system it shares with
its own image, from that image's corner, and each image is stored under its region's name, as squidpy's
library_key convention has it, so Loki cuts each section's patches from its own slide.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tissuelens.datasets.contract import ENTRY_DEFAULTS
from tissuelens.errors import InputError

log = logging.getLogger(__name__)
IMAGE_MAX_PX = 4096  # the finest image level whose longer side fits is kept (the report and Loki need no more)


def _names(elements) -> str:
    return ", ".join(sorted(map(str, elements))) or "none"


def pick_table(sdata, table: str | None, where: str) -> str:
    if table is None:
        if len(sdata.tables) != 1:
            raise InputError(f"{where}: has {len(sdata.tables)} tables ({_names(sdata.tables)}); set table:")
        return next(iter(sdata.tables))
    if table not in sdata.tables:
        raise InputError(f"{where}: no table '{table}' (tables: {_names(sdata.tables)})")
    return table


def pick_shapes(sdata, attrs: dict, shapes: str | None, where: str) -> list[str]:
    """The shapes elements holding the table's geometry: [`shapes`], else the regions the table annotates that
    are shapes elements (none, one, or several: one per section), in the table's order."""
    if shapes is not None:
        if shapes not in sdata.shapes:
            raise InputError(f"{where}: no shapes '{shapes}' (shapes: {_names(sdata.shapes)})")
        return [shapes]
    region = attrs.get("region")
    regions = [region] if isinstance(region, str) else list(region or [])
    return [r for r in regions if r in sdata.shapes]


def affine(element, coordinate_system: str) -> np.ndarray:
    """3x3 matrix from the element's intrinsic (x, y) to `coordinate_system`."""
    from spatialdata.transformations import get_transformation

    t = get_transformation(element, to_coordinate_system=coordinate_system)
    return np.asarray(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=np.float64)


def coordinate_systems(element) -> list[str]:
    from spatialdata.transformations import get_transformation

    return list(get_transformation(element, get_all=True))


def pick_coordinate_system(shape_els: dict, image_el, where: str) -> str:
    """One coordinate system of every shapes element ({name: element}) and the image: `global` when there is
    one, else one where the shapes are untransformed, else the first by name."""
    each = {name: coordinate_systems(el) for name, el in shape_els.items()}
    systems = [s for s in next(iter(each.values())) if all(s in other for other in each.values())]
    if not systems:  # only with several regions: one element always has a system
        listed = "; ".join(f"{name}: {', '.join(found)}" for name, found in each.items())
        raise InputError(f"{where}: the table's regions share no coordinate system ({listed}); "
                         "set shapes: to read one region, or image: {region: image} for regions on their own slides")
    if image_el is not None:
        systems = [s for s in systems if s in coordinate_systems(image_el)]
        if not systems:
            raise InputError(f"{where}: the image and the shapes share no coordinate system")
    if "global" in systems:
        return "global"
    untransformed = [s for s in systems if all(np.allclose(affine(el, s), np.eye(3)) for el in shape_els.values())]
    return (untransformed or sorted(systems))[0]


def shape_geometry(gdf, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (n, 2) and areas (n,) of shapes (polygons, or points with a `radius`) in the target system."""
    if "radius" in gdf.columns:
        centre = np.column_stack([gdf.geometry.x.to_numpy(), gdf.geometry.y.to_numpy()])
        area = np.pi * gdf["radius"].to_numpy(dtype=np.float64) ** 2
    else:
        c = gdf.geometry.centroid
        centre = np.column_stack([c.x.to_numpy(), c.y.to_numpy()])
        area = gdf.geometry.area.to_numpy(dtype=np.float64)
    centre = centre @ matrix[:2, :2].T + matrix[:2, 2]
    return centre, area * abs(np.linalg.det(matrix[:2, :2]))


def image_levels(image_el) -> list:
    """The image's resolution levels, finest first, as (c, y, x) DataArrays."""
    from xarray import DataTree

    if isinstance(image_el, DataTree):
        return [image_el[key]["image"] for key in sorted(image_el.keys(), key=lambda k: int(k.replace("scale", "")))]
    return [image_el]


def to_rgb_uint8(data: np.ndarray) -> np.ndarray:
    """(y, x, 3) uint8: RGB as it is; any other image (fluorescence, several channels) as its first
    channel stretched between the 0.5 and 99.5 percentiles, in grey."""
    if data.shape[0] == 3 and data.dtype == np.uint8:
        return np.ascontiguousarray(np.moveaxis(data, 0, -1))
    grey = data[0].astype(np.float64)
    lo, hi = np.percentile(grey, [0.5, 99.5]) if grey.size else (0.0, 1.0)
    scaled = np.clip((grey - lo) / max(hi - lo, 1e-12), 0, 1)
    return np.repeat(np.round(scaled * 255).astype(np.uint8)[..., None], 3, axis=2)


def tissue_image(image_el, coordinate_system: str, where: str, channel: str | None = None):
    """(RGB uint8 image, pixels per coordinate unit, origin of the pixel grid in coordinates); `channel`
    names the channel shown when the image has several (default the first)."""
    levels = image_levels(image_el)
    full = levels[0]
    level = next((lv for lv in levels if max(lv.sizes["y"], lv.sizes["x"]) <= IMAGE_MAX_PX), levels[-1])
    down = np.array([full.sizes["x"] / level.sizes["x"], full.sizes["y"] / level.sizes["y"]])
    m = affine(image_el, coordinate_system) @ np.diag([down[0], down[1], 1.0])
    if abs(m[0, 1]) > 1e-9 or abs(m[1, 0]) > 1e-9 or m[0, 0] <= 0 or not np.isclose(m[0, 0], m[1, 1], rtol=1e-3):
        raise InputError(f"{where}: the image's transformation to '{coordinate_system}' is not a uniform scale "
                         f"and shift ({m[:2].round(4).tolist()}); choose another image or set image: null")
    if channel is not None:
        level = level.sel(c=[channel])
    data = np.asarray(level.transpose("c", "y", "x").values)
    return to_rgb_uint8(data), 1.0 / m[0, 0], m[:2, 2].copy()


def mosaic(image_els: dict, coordinate_system: str, where: str):
    """Tiles (e.g. CosMx fields of view) placed by their transformations on one canvas of at most
    IMAGE_MAX_PX a side, nearest-neighbour sampled; a later tile covers an earlier one where they overlap.
    A transformation fitted to measured positions is a scale and shift up to round-off (1e-3 relative);
    a tile whose is not is left out and logged. Returns what `tissue_image` returns, or None without tiles."""
    tiles = []
    for name, el in image_els.items():
        level = image_levels(el)[0]
        m = affine(el, coordinate_system)
        scale = (m[0, 0] + m[1, 1]) / 2
        if not (scale > 0 and np.isclose(m[0, 0], m[1, 1], rtol=1e-3) and abs(m[0, 1]) + abs(m[1, 0]) < 1e-3 * scale):
            log.warning("%s: image '%s' left out: its transformation to '%s' is not a scale and shift (%s)", where,
                        name, coordinate_system, m[:2].round(4).tolist())
            continue
        size = np.array([level.sizes["x"], level.sizes["y"]])
        tiles.append((level, scale, m[:2, 2], size))
    if not tiles:
        return None
    lo = np.min([t for _, _, t, _ in tiles], axis=0)
    hi = np.max([t + s * size for _, s, t, size in tiles], axis=0)
    per_unit = min(min(1 / s for _, s, _, _ in tiles), IMAGE_MAX_PX / float(np.max(hi - lo)))
    shape = np.maximum(np.floor((hi - lo) * per_unit + 1e-6).astype(int), 1)  # 1e-6: float round-off
    canvas = np.zeros((shape[1], shape[0], 3), dtype=np.uint8)
    for level, s, t, size in tiles:
        first = np.floor((t - lo) * per_unit).astype(int)
        last = np.minimum(np.ceil((t + s * size - lo) * per_unit).astype(int), shape)
        # canvas pixel centres -> the tile's pixels
        cols = np.arange(first[0], last[0])
        rows = np.arange(first[1], last[1])
        src_x = np.floor((lo[0] + (cols + 0.5) / per_unit - t[0]) / s).astype(int)
        src_y = np.floor((lo[1] + (rows + 0.5) / per_unit - t[1]) / s).astype(int)
        ok_x, ok_y = (src_x >= 0) & (src_x < size[0]), (src_y >= 0) & (src_y < size[1])
        rgb = to_rgb_uint8(np.asarray(level.transpose("c", "y", "x").values))
        canvas[np.ix_(rows[ok_y], cols[ok_x])] = rgb[np.ix_(src_y[ok_y], src_x[ok_x])]
    return canvas, float(per_unit), lo.astype(np.float64)


def attach_image(adata, library_id: str, img: np.ndarray, per_unit: float, diameter: float, source: str,
                 where: str) -> None:
    """The image the scanpy/squidpy way: `uns["spatial"][library_id]` (beside the other libraries already
    attached), hires = `img`, `tissue_hires_scalef` = its pixels per coordinate unit."""
    adata.uns.setdefault("spatial", {})[library_id] = {
        "images": {"hires": img},
        "scalefactors": {"tissue_hires_scalef": float(per_unit), "spot_diameter_fullres": float(diameter)},
        "metadata": {"source_image": source},
    }
    log.info("%s: image '%s' as hires %dx%d px, %.4g px per coordinate unit", where, source, img.shape[1],
             img.shape[0], per_unit)


def image_under(adata, library_id: str, name: str, image_el, system: str, area: np.ndarray, unit_scale: float,
                spot_diameter: float | None, where: str) -> np.ndarray:
    """Attach `image_el` (seen in `system`) under uns["spatial"][library_id], its spot diameter given or the median
    of the cells' (`area`, in the output unit); return its corner in the output unit: the coordinates' origin."""
    img, per_unit, origin = tissue_image(image_el, system, where)
    diameter = spot_diameter if spot_diameter is not None else float(np.median(2 * np.sqrt(area / np.pi)))
    attach_image(adata, library_id, img, per_unit / unit_scale, diameter, name, where)
    return origin * unit_scale


def name_by_ids(adata, ids) -> None:
    """Cell ids name the rows when the table's names are only their positions (0, 1, ...) and the ids are unique."""
    default_names = np.array_equal(adata.obs_names.to_numpy(), np.arange(adata.n_obs).astype(str))
    if default_names and pd.Index(ids).is_unique:
        adata.obs_names = pd.Index(ids).astype(str)


def rows_geometry(gdf, region: str, ids, system: str, instance_key: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(centroids, areas) in `system` of the shapes of `region` (a GeoDataFrame) that the rows' `ids` name."""
    missing = ~pd.Index(ids).isin(gdf.index)
    if missing.any():
        raise InputError(f"{what}: {int(missing.sum())} rows have no shape in '{region}' "
                         f"(e.g. {instance_key} {ids[missing][0]!r})")
    return shape_geometry(gdf.loc[ids], affine(gdf, system))


def several_regions(adata, gdfs: dict, systems: dict, region_key: str | None, instance_key: str | None, what: str):
    """(adata, centroids, areas) of a table over several shapes elements ({region: GeoDataFrame}), each row
    placed by its own region's shapes in that region's coordinate system (`systems`); obs[region_key] stays as
    the section column. `what` names the table in errors."""
    if region_key not in adata.obs or instance_key not in adata.obs:
        raise InputError(f"{what} annotates several shapes ({_names(gdfs)}) but its obs lacks the region_key "
                         f"{region_key!r} or instance_key {instance_key!r} column that places each row")
    region = adata.obs[region_key].astype(str).to_numpy()
    stray = [r for r in pd.unique(region) if r not in gdfs]
    if stray:
        n = int(np.isin(region, stray).sum())
        raise InputError(f"{what}: {n} rows annotate region '{stray[0]}', which is not a shapes element "
                         f"(regions with shapes: {_names(gdfs)}); set shapes: to read one region")
    ids = adata.obs[instance_key].to_numpy()
    coords, area = np.empty((adata.n_obs, 2)), np.empty(adata.n_obs)
    for name, gdf in gdfs.items():
        rows = np.flatnonzero(region == name)
        coords[rows], area[rows] = rows_geometry(gdf, name, ids[rows], systems[name], instance_key, what)
    adata.obs[region_key] = pd.Categorical(region, categories=[r for r in gdfs if r in set(region)])
    names = pd.Index(ids).astype(str)
    if not names.is_unique:  # each region numbers its own cells: the region makes the name unique
        names = pd.Index([f"{r}_{i}" for r, i in zip(region, names)])
    name_by_ids(adata, names)
    log.info("%s: %d regions (%s) read as sections, obs['%s']", what, len(gdfs), _names(gdfs), region_key)
    return adata, coords, area


def to_anndata(sdata, where: str, library_id: str, *, table: str | None = None, image: str | dict | None = None,
               shapes: str | None = None, unit: str, unit_scale: float = 1.0, spot_diameter: float | None = None,
               keep_area: bool = False):
    """AnnData of one SpatialData table: its counts and obs, `obsm["spatial"]`, the image in `uns["spatial"]`
    (`image` names one image element, or, for a table over several regions on their own slides, one per region).

    `unit_scale` converts the coordinate system's unit to `unit` (e.g. Xenium's global system is morphology
    image pixels: × pixel_size gives µm); `spot_diameter` is in `unit`.
    """
    table = pick_table(sdata, table, where)
    adata = sdata.tables[table].copy()
    attrs = dict(adata.uns.pop("spatialdata_attrs", {}) or {})
    per_region = dict(image) if isinstance(image, dict) else {}  # {region: image}: regions on their own slides
    for name in per_region.values() if per_region else [image] if image is not None else []:
        if name not in sdata.images:
            raise InputError(f"{where}: no image '{name}' (images: {_names(sdata.images)})")
    image_el = sdata.images[image] if isinstance(image, str) else None
    regions = pick_shapes(sdata, attrs, shapes, where)
    region_key, instance_key = attrs.get("region_key"), attrs.get("instance_key")
    if per_region and (len(regions) < 2 or set(per_region) != set(regions)):
        raise InputError(f"{where}: image: names an image per region ({_names(per_region)}), but table '{table}' "
                         f"is read over the regions {_names(regions)}; name one image, or one for each region")

    if not regions:
        if "spatial" not in adata.obsm:
            raise InputError(f"{where}: table '{table}' annotates no shapes and has no obsm['spatial']; set shapes:")
        if image_el is not None:
            raise InputError(f"{where}: table '{table}' annotates no shapes, so its coordinates cannot be placed "
                             "on the image; set shapes:")
        coords, area, system = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2] * unit_scale, None, None
    elif len(regions) > 1:
        gdfs = {r: sdata.shapes[r] for r in regions}
        if per_region:  # each region in a system it shares with its own image
            systems = {r: pick_coordinate_system({r: gdfs[r]}, sdata.images[per_region[r]],
                                                 f"{where}: region '{r}'") for r in regions}
        else:
            systems = dict.fromkeys(regions, pick_coordinate_system(gdfs, image_el, where))
        system = ", ".join(dict.fromkeys(systems.values()))
        adata, coords, area = several_regions(adata, gdfs, systems, region_key, instance_key,
                                              f"{where}: table '{table}'")
        coords, area = coords * unit_scale, area * unit_scale**2
        adata.uns[ENTRY_DEFAULTS] = {"section_key": region_key}
    else:
        shapes = regions[0]
        gdf = sdata.shapes[shapes]
        system = pick_coordinate_system({shapes: gdf}, image_el, where)
        if region_key in adata.obs and instance_key in adata.obs:
            rows = (adata.obs[region_key].astype(str) == shapes).to_numpy()
            if not rows.all():
                log.info("%s: %d of %d table rows annotate other elements than '%s'; dropped", where,
                         int((~rows).sum()), adata.n_obs, shapes)
                adata = adata[rows].copy()
            ids = adata.obs[instance_key].to_numpy()
            coords, area = rows_geometry(gdf, shapes, ids, system, instance_key, f"{where}: table '{table}'")
            name_by_ids(adata, ids)
        elif len(gdf) != adata.n_obs:
            raise InputError(f"{where}: table '{table}' ({adata.n_obs} rows) does not annotate shapes '{shapes}' "
                             f"({len(gdf)} shapes) and their sizes differ")
        else:
            coords, area = shape_geometry(gdf, affine(gdf, system))
        coords, area = coords * unit_scale, area * unit_scale**2
        adata.obs.drop(columns=[c for c in (region_key,) if c in adata.obs], inplace=True)

    frame = {"unit": unit, "coordinate_system": system or "", "shapes": ", ".join(regions), "table": table,
             "origin": [0.0, 0.0]}
    if image_el is not None or per_region:
        adata.uns["spatial"] = {}
        frame["image"] = image
    if image_el is not None:
        origin = image_under(adata, library_id, image, image_el, system, area, unit_scale, spot_diameter, where)
        coords = coords - origin
        frame["origin"] = [float(v) for v in origin]
    elif per_region:
        section = adata.obs[region_key].astype(str).to_numpy()
        frame["origin"] = {}
        for region, name in per_region.items():
            rows = section == region
            origin = image_under(adata, region, name, sdata.images[name], systems[region], area[rows], unit_scale,
                                 spot_diameter, f"{where}: region '{region}'")
            coords[rows] -= origin
            frame["origin"][region] = [float(v) for v in origin]
    adata.obsm["spatial"] = coords
    if keep_area and area is not None:
        adata.obs["area"] = area
    adata.uns["coordinates"] = frame
    return adata
