"""Small matplotlib helpers shared by the sections (headless backend, consistent group colours)."""

from __future__ import annotations

import numpy as np


def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def group_palette(categories) -> dict:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(categories) <= 10 else "tab20"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(categories)}


def subsample(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """Row indices to plot: all of them, or `max_points` chosen by seed (sorted)."""
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def point_size(n: int) -> float:
    # marker area (pt^2) so that n spots roughly tile a ~2-inch panel, as on a Visium slide
    return float(np.clip(20000.0 / max(n, 1), 0.3, 40.0))


def tissue_image(adata, library_id: str | None = None):
    """(image as float RGB in [0, 1], scale factor from coordinates to image pixels, library id) of
    `library_id` (default: the first library with an image) or None."""
    spatial = adata.uns.get("spatial") if hasattr(adata, "uns") else None
    if not isinstance(spatial, dict):
        return None
    for library, entry in spatial.items():
        if library_id is not None and str(library) != str(library_id):
            continue
        images = entry.get("images", {}) if isinstance(entry, dict) else {}
        scalefactors = entry.get("scalefactors", {}) if isinstance(entry, dict) else {}
        for res in ("hires", "lowres"):
            if res in images:
                img = np.asarray(images[res])
                if img.ndim == 2:
                    img = np.stack([img] * 3, axis=-1)
                img = img[..., :3].astype(float)
                if img.max() > 1.0:
                    img = img / 255.0
                scale = float(scalefactors.get(f"tissue_{res}_scalef", 1.0))
                return np.clip(img, 0, 1), scale, str(library)
    return None


def section_images(adata, sections) -> list | None:
    """Each section's own image (the library named after it, squidpy's library_key layout), in the order of
    `sections` (a Categorical, tissuelens.sections); None unless every section has one."""
    own = [tissue_image(adata, name) for name in sections.categories]
    return [found[0] for found in own] if all(found is not None for found in own) else None


def spatial_panel(ax, coords, values, *, categorical: bool, palette=None, image=None, scale=1.0, title="",
                  cmap="viridis", size=None, legend=True):
    """Spots on tissue coordinates (over the tissue image when given), y pointing down like the image."""
    xy = np.asarray(coords, dtype=float) * scale
    size = size or point_size(len(xy))
    if image is not None:
        ax.imshow(image, origin="upper")
    if categorical:
        cats = list(values.cat.categories) if hasattr(values, "cat") else sorted(set(values))
        palette = palette or group_palette(cats)
        vals = np.asarray(values.astype(str) if hasattr(values, "astype") else values)
        for c in cats:
            m = vals == str(c)
            ax.scatter(xy[m, 0], xy[m, 1], s=size, color=palette[c], label=str(c), linewidths=0,
                       alpha=0.85 if image is not None else 1.0)
        if legend and len(cats) <= 20:
            ax.legend(frameon=False, fontsize=7, markerscale=max(1.0, 6 / np.sqrt(size)), loc="upper left",
                      bbox_to_anchor=(1.0, 1.0))
    else:
        vals = np.asarray(values, dtype=float)
        # robust colour limits: exp-space factors and activations are heavy-tailed, a few spots
        # would otherwise take the whole colour range
        lo, hi = np.nanpercentile(vals, [1, 99]) if np.isfinite(vals).any() else (0.0, 1.0)
        import matplotlib

        cmap = matplotlib.colormaps.get_cmap(cmap).with_extremes(bad="lightgrey")  # NaN: no value for that spot
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=vals, s=size, cmap=cmap, linewidths=0, vmin=lo, vmax=max(hi, lo + 1e-12),
                        plotnonfinite=True)
        ax.figure.colorbar(sc, ax=ax, fraction=0.046, pad=0.02)
    if image is None:
        ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
