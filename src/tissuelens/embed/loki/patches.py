"""H&E patches of spots, as Loki's `segment_patches`: a square of the image centred on each spot (20 x 20 px
of the hires image by default, or `patch_um` microns). Loki skips spots whose patch reaches past the image;
we pad them white and flag them.

Geometry: `obsm["spatial"]` holds full-resolution pixel (x, y) = (column, row); an image at
`uns["spatial"][lib]["images"][key]` is the full-resolution image scaled by
`scalefactors["tissue_<key>_scalef"]` (scanpy/squidpy convention); pixel (r, c) covers [c, c+1) x [r, r+1).
Several sections: one image per section (`spot_images`).

Imported by the Loki stack (Python 3.9).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tissuelens.errors import InputError


@dataclass
class SpotImage:
    image: np.ndarray  # (H, W, 3) uint8
    scale: float  # image pixels per full-resolution pixel
    spot_diameter_fullres: float
    library: str
    key: str


def spot_image(adata, where: str, image_key: str = "hires", library_id: str | None = None) -> SpotImage:
    """The H&E image of a Visium-like AnnData with its scale factors; InputError if there is none."""
    libraries = adata.uns.get("spatial") if hasattr(adata, "uns") else None
    if not isinstance(libraries, dict) or not libraries:
        raise InputError(f"{where}: no H&E image (uns['spatial'] is missing); Loki image embeddings need one (set embed.loki.image: false for text only)")
    if library_id is None:
        if len(libraries) > 1:
            raise InputError(f"{where}: uns['spatial'] has several libraries ({', '.join(map(str, libraries))}); set embed.loki.library_id")
        library_id = next(iter(libraries))
    if library_id not in libraries:
        raise InputError(f"{where}: uns['spatial'] has no library '{library_id}' (has: {', '.join(map(str, libraries))})")
    lib = libraries[library_id]
    images = lib.get("images") or {}
    if image_key not in images:
        raise InputError(f"{where}: uns['spatial']['{library_id}']['images'] has no '{image_key}' image (has: {', '.join(images) or 'none'})")
    scalefactors = lib.get("scalefactors") or {}
    scale_key = f"tissue_{image_key}_scalef"
    for key in (scale_key, "spot_diameter_fullres"):
        value = scalefactors.get(key)
        if value is None or not np.isfinite(float(value)) or float(value) <= 0:
            raise InputError(f"{where}: uns['spatial']['{library_id}']['scalefactors']['{key}'] is missing or not positive")
    return SpotImage(
        as_rgb_uint8(np.asarray(images[image_key]), f"{where}: image '{image_key}'"),
        float(scalefactors[scale_key]),
        float(scalefactors["spot_diameter_fullres"]),
        str(library_id),
        image_key,
    )


def spot_images(adata, where: str, image_key: str = "hires", library_id: str | None = None) -> list:
    """(rows, SpotImage) pairs covering every spot: one image for all, or, for a dataset of several sections
    (tissuelens.sections) whose uns['spatial'] holds a library named after each section (squidpy's
    library_key convention), each section's spots with their own image. `library_id` set: that one image."""
    from tissuelens.sections import section_labels

    labels = section_labels(adata)
    libraries = adata.uns.get("spatial") if hasattr(adata, "uns") else None
    if (labels is not None and library_id is None and isinstance(libraries, dict) and len(libraries) > 1
            and set(map(str, labels.categories)) <= set(map(str, libraries))):
        codes = np.asarray(labels.codes)
        return [(np.flatnonzero(codes == i), spot_image(adata, where, image_key, str(name)))
                for i, name in enumerate(labels.categories) if (codes == i).any()]
    return [(np.arange(adata.n_obs), spot_image(adata, where, image_key, library_id))]


def as_rgb_uint8(img: np.ndarray, where: str) -> np.ndarray:
    """(H, W, 3) uint8 from grey, RGB or RGBA, uint8 or float in [0, 1] (scanpy stores either)."""
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.shape[0] == 0 or img.shape[1] == 0:
        raise InputError(f"{where}: shape {img.shape} is not an (H, W, 3|4) image")
    img = img[..., :3]
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    img = img.astype(np.float64)
    if not np.all(np.isfinite(img)):
        raise InputError(f"{where}: has NaN or infinite pixels")
    if img.max() > 1.0 + 1e-6:
        return np.clip(np.round(img), 0, 255).astype(np.uint8)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


VISIUM_SPOT_UM = 55.0  # Visium spot diameter: converts patch_um to pixels through spot_diameter_fullres


def patch_side(image: SpotImage, patch_px=20, patch_um=None, spot_um: float = VISIUM_SPOT_UM) -> int:
    """Patch side in image pixels: `patch_px` (Loki's `segment_patches` crops 20 x 20 px of the hires
    image), or `patch_um` microns through the spot diameter (`spot_um` microns = spot_diameter_fullres
    full-resolution pixels). At least 1 px: the model's own transform resizes any patch."""
    if patch_um is not None:
        side = float(patch_um) / float(spot_um) * image.spot_diameter_fullres * image.scale
    else:
        side = float(patch_px)
    return max(int(round(side)), 1)


def patch_boxes(xy_fullres: np.ndarray, scale: float, side: int):
    """Top-left corners (x0, y0) in image pixels of each spot's `side` x `side` patch, and the centres.

    As Loki's `segment_patches`: x0 = round(x * scale - side / 2) with round-half-to-even (Python's
    `round`), the patch is [x0, x0 + side) x [y0, y0 + side).
    """
    centre = np.asarray(xy_fullres, dtype=np.float64) * scale
    corner = np.rint(centre - side / 2.0).astype(np.int64)
    return corner[:, 0], corner[:, 1], centre


def patch_padded(x0: np.ndarray, y0: np.ndarray, side: int, shape: tuple) -> np.ndarray:
    """True where a patch reaches past the image edge (Loki skips such spots; we pad them white)."""
    h, w = shape[:2]
    return (x0 < 0) | (y0 < 0) | (x0 + side > w) | (y0 + side > h)


def check_patches(centre: np.ndarray, shape: tuple, obs_names, where: str) -> None:
    """Spots must lie on the image."""
    h, w = shape[:2]
    bad = ~np.all(np.isfinite(centre), axis=1) | (centre[:, 0] < 0) | (centre[:, 0] >= w) | (centre[:, 1] < 0) | (centre[:, 1] >= h)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{where}: {int(bad.sum())} spots lie outside the {w}x{h} H&E image (e.g. '{obs_names[i]}' at "
            f"({centre[i, 0]:.1f}, {centre[i, 1]:.1f}) image px); check obsm['spatial'] and the scalefactors"
        )


def crop_patches(padded: np.ndarray, pad: int, x0: np.ndarray, y0: np.ndarray, side: int) -> np.ndarray:
    """(n, side, side, 3) crops from an image padded by `pad` white pixels on every side."""
    d = np.arange(side)
    rows = (y0 + pad)[:, None, None] + d[None, :, None]
    cols = (x0 + pad)[:, None, None] + d[None, None, :]
    return padded[rows, cols]


def pad_image(image: np.ndarray, pad: int) -> np.ndarray:
    return np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="constant", constant_values=255)
