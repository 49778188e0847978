"""The demo dataset: Poisson counts from known spatial factors, with a synthetic H&E image.

`pattern: smooth` (the demo): factors are exp of Gaussian-process draws (random Fourier features of an
RBF kernel, so the cost is linear in the number of spots) on a hexagonal grid, plus non-spatial
log-normal factors; Poisson counts with sparse non-negative loadings at `depth`. `quilt` and `blocks`:
piecewise-constant 0/1 factors with sharp edges on a square grid (a quilt of square tiles, each tile owned
by one factor; or one solid block per factor), plus non-spatial Bernoulli(0.2) factors, with the count
model of the NSF paper's benchmark (Townes & Engelhardt 2023, written here from its description): each
gene belongs to one factor, its mean is `background` + `expression_mean` where the factor is on, and the
counts are negative binomial with shape `nb_shape`. Truth is in `obsm["true_factors"]` /
`varm["true_loadings"]`.
"""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

SPOT_SPACING_PX = 100.0  # full-resolution pixels between neighbouring spots (Visium-like)
N_FOURIER = 256
PATTERNS = ("smooth", "quilt", "blocks")
QUILT_TILES = 6  # tiles per side: 36 tiles of 6 x 6 spots on NSF's 36 x 36 grid
MIN_PATTERN_SIDE = {"quilt": 2 * QUILT_TILES, "blocks": 8}
NONSPATIAL_ON_PROBABILITY = 0.2  # patterns: each non-spatial 0/1 factor is on at a fifth of the spots
MAX_IMAGE_SIZE = 4096
IMAGE_BAND_ROWS = 256
COUNT_BLOCK_ROWS = 4096
# planted marker genes (opt-in): expected count per spot inside / outside the marker's group, times `depth`
MARKER_IN, MARKER_OUT = 2.0, 0.1


def hex_grid(n_spots: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First `n_spots` positions of a roughly square hexagonal grid: (array_row, array_col, xy in px)."""
    n_cols = int(np.ceil(np.sqrt(n_spots)))
    idx = np.arange(n_spots)
    row, col = idx // n_cols, idx % n_cols
    x = (col + 0.5 * (row % 2)) * SPOT_SPACING_PX
    y = row * SPOT_SPACING_PX * np.sqrt(3) / 2
    return row, 2 * col + (row % 2), np.column_stack([x, y]) + 2 * SPOT_SPACING_PX


def square_grid(n_spots: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A full side x side square grid (n_spots must be a square): (array_row, array_col, xy in px)."""
    side = math.isqrt(n_spots)
    idx = np.arange(side * side)
    row, col = idx // side, idx % side
    return row, col, np.column_stack([col, row]) * SPOT_SPACING_PX + 2 * SPOT_SPACING_PX


def check_pattern(pattern: str, n_spots: int, where: str) -> None:
    from tissuelens.errors import InputError

    if pattern not in PATTERNS:
        raise InputError(f"{where}: synthetic.pattern '{pattern}' does not exist (one of {', '.join(PATTERNS)})")
    if pattern == "smooth":
        return
    side, need = math.isqrt(n_spots), MIN_PATTERN_SIDE[pattern]
    if side * side != n_spots or side < need:
        raise InputError(f"{where}: synthetic.n_spots: the {pattern} pattern needs a full square grid of at least "
                         f"{need} x {need} = {need * need} spots, got {n_spots}")


def quilt_fields(row: np.ndarray, col: np.ndarray, n_fields: int, rng) -> np.ndarray:
    """0/1 fields: the grid cut into QUILT_TILES² square tiles, dealt to the factors in equal shares at
    random, so every factor is a patchwork of sharp-edged squares and every tile belongs to one factor."""
    side = int(row.max()) + 1
    tile = (row * QUILT_TILES // side) * QUILT_TILES + col * QUILT_TILES // side
    owner = rng.permutation(np.arange(QUILT_TILES**2) % n_fields)
    return (owner[tile][:, None] == np.arange(n_fields)[None]).astype(np.float64)


def block_fields(row: np.ndarray, col: np.ndarray, n_fields: int, rng) -> np.ndarray:
    """0/1 fields: one axis-aligned block per factor, each inside its own cell of a ⌈√F⌉ x ⌈√F⌉ layout of
    the grid (so blocks never overlap and every factor is identifiable), half to all of the cell's side on
    each axis, placed at random within it."""
    side = int(row.max()) + 1
    per = math.ceil(math.sqrt(n_fields))
    cell = side // per
    out = np.empty((row.size, n_fields))
    for f in range(n_fields):
        top0, left0 = (f // per) * cell, (f % per) * cell
        h, w = rng.integers(cell // 2, cell + 1, size=2)
        top, left = top0 + rng.integers(0, cell - h + 1), left0 + rng.integers(0, cell - w + 1)
        inside = (row >= top) & (row < top + h) & (col >= left) & (col < left + w)
        out[:, f] = inside
    return out


def smooth_fields(unit_xy: np.ndarray, n_fields: int, lengthscale: float, rng) -> np.ndarray:
    """Draws of RBF-GP fields at `unit_xy` (N, 2), shape (N, n_fields), each standardised to mean 0 and
    standard deviation 1 over the spots.

    A domain only a few lengthscales wide holds a few bumps of each draw, so the raw draws' spread over
    the spots varies a lot (sd 0.5 to 1.3 for lengthscale 0.25): one factor would be nearly flat in one
    seed and dominant in the next. Standardising gives every spatial factor the same dynamic range
    (e^{±1}), so recovery does not depend on which seed drew a weak factor.
    """
    omega = rng.normal(scale=1.0 / lengthscale, size=(n_fields, N_FOURIER, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(n_fields, N_FOURIER))
    proj = np.einsum("nd,fkd->nfk", unit_xy, omega) + phase[None]
    fields = np.sqrt(2.0 / N_FOURIER) * np.cos(proj).sum(axis=2)
    return (fields - fields.mean(0)) / fields.std(0)


def gene_names(n_genes: int) -> tuple[list[str], list[str]]:
    """Symbols and Ensembl-style ids; the first two genes are mitochondrial (for the MT filter)."""
    symbols = ["MT-CO1", "MT-ND1"] + [f"SYN{i:04d}" for i in range(1, n_genes - 1)]
    ids = [f"ENSG{900000000 + i:011d}" for i in range(n_genes)]
    return symbols[:n_genes], ids


def auto_image_size(n_spots: int) -> int:
    """Hires side that keeps about 20 px between spots (a Visium hires image's density), within
    [600, MAX_IMAGE_SIZE]: a fixed 600 px image leaves a 100,000-spot grid 2 px per spot."""
    return int(np.clip(20 * np.ceil(np.sqrt(n_spots)), 600, MAX_IMAGE_SIZE))


def he_image(xy_px: np.ndarray, field: np.ndarray, size: int, rng) -> tuple[np.ndarray, float]:
    """An RGB uint8 H&E-like image: pink stroma, purple nuclei density following `field`.

    Painted in bands of rows so memory stays O(band x size) at any image size."""
    from scipy.spatial import cKDTree

    extent = xy_px.max() + 2 * SPOT_SPACING_PX
    scale = size / extent
    tree = cKDTree(xy_px)
    level_of_spot = (field - field.min()) / (np.ptp(field) + 1e-9)
    stroma = np.array([0.9, 0.55, 0.7])
    nuclei = np.array([0.35, 0.2, 0.55])
    out = np.empty((size, size, 3), dtype=np.uint8)
    cols = np.arange(size)
    for top in range(0, size, IMAGE_BAND_ROWS):
        rows = np.arange(top, min(top + IMAGE_BAND_ROWS, size))
        grid = np.stack(np.meshgrid(cols, rows, indexing="xy"), axis=-1) / scale
        dist, nearest = tree.query(grid.reshape(-1, 2))
        inside = (dist < SPOT_SPACING_PX).reshape(rows.size, size)
        level = level_of_spot[nearest].reshape(rows.size, size)
        band = np.empty((rows.size, size, 3), dtype=np.float32)
        band[:] = (0.95, 0.85, 0.9)  # glass/background
        # paint each spot's neighbourhood with a hematoxylin tint proportional to the field
        tissue = stroma * (1 - level[..., None]) + nuclei * level[..., None]
        band[inside] = tissue[inside]
        band += rng.normal(scale=0.03, size=band.shape)  # row-major: the same draws as one whole-image call
        out[top : top + rows.size] = (np.clip(band, 0, 1) * 255).astype(np.uint8)
    return out, scale


def counts_in_blocks(factors: np.ndarray, draw) -> sp.csr_matrix:
    """`draw(rows of factors)` for blocks of COUNT_BLOCK_ROWS rows, stacked as int32 CSR: never a dense
    spots x genes matrix, and the draws are the same as one call on all rows."""
    blocks = [sp.csr_matrix(draw(factors[lo : lo + COUNT_BLOCK_ROWS]).astype(np.int32))
              for lo in range(0, factors.shape[0], COUNT_BLOCK_ROWS)]
    return sp.vstack(blocks, format="csr")


def pattern_counts(factors: np.ndarray, rng, n_genes: int, expression_mean: float, background: float,
                   nb_shape: float) -> tuple[sp.csr_matrix, np.ndarray]:
    """NSF's benchmark count model on 0/1 factors: every gene owned by one factor at random, mean
    `background` + `expression_mean` × factor, negative binomial with shape `nb_shape` (variance
    μ + μ²/shape). Returns (counts CSR, loadings (genes, factors))."""
    owner = rng.integers(factors.shape[1], size=n_genes)
    loadings = np.zeros((n_genes, factors.shape[1]))
    loadings[np.arange(n_genes), owner] = expression_mean

    def draw(rows):
        mean = background + rows @ loadings.T
        return rng.negative_binomial(nb_shape, nb_shape / (mean + nb_shape))

    return counts_in_blocks(factors, draw), loadings


def poisson_counts(factors: np.ndarray, loadings: np.ndarray, rng) -> sp.csr_matrix:
    """Poisson(factors @ loadings.T) as CSR, drawn in blocks of rows."""
    return counts_in_blocks(factors, lambda rows: rng.poisson(rows @ loadings.T))


def marker_genes(group_idx: np.ndarray, n_groups: int, per_group: int, depth: float, seed: int, n_genes: int):
    """Counts (CSR), symbols and ids of `per_group` marker genes per group (`MRK<g>_<j>`, group g = domain_g),
    drawn from their own random stream so that the other genes, the factors and the image stay as without."""
    rng = np.random.default_rng([seed, 15])
    owner = np.repeat(np.arange(n_groups), per_group)
    rate = np.where(group_idx[:, None] == owner[None, :], MARKER_IN * depth, MARKER_OUT * depth)
    counts = sp.csr_matrix(rng.poisson(rate).astype(np.int32))
    symbols = [f"MRK{g + 1}_{j + 1}" for g in range(n_groups) for j in range(per_group)]
    ids = [f"ENSG{900000000 + n_genes + i:011d}" for i in range(len(symbols))]
    return counts, symbols, ids


def make_synthetic(
    n_spots: int = 900,
    n_genes: int = 200,
    n_spatial_factors: int = 3,
    n_groups: int = 4,
    seed: int = 0,
    lengthscale: float = 0.25,
    depth: float = 3.0,
    image_size: int | None = None,
    library_id: str = "demo",
    pattern: str = "smooth",
    n_nonspatial_factors: int = 1,
    marker_genes_per_group: int = 0,
    expression_mean: float = 20.0,
    background: float = 0.2,
    nb_shape: float = 10.0,
) -> ad.AnnData:
    check_pattern(pattern, n_spots, f"synthetic dataset '{library_id}'")
    rng = np.random.default_rng(seed)
    array_row, array_col, xy = hex_grid(n_spots) if pattern == "smooth" else square_grid(n_spots)
    unit = (xy - xy.min(0)) / np.ptp(xy, axis=0).max()

    if pattern == "smooth":
        spatial = smooth_fields(unit, n_spatial_factors, lengthscale, rng)
        factors = np.exp(np.hstack([spatial, rng.normal(scale=0.5, size=(n_spots, n_nonspatial_factors))]))
        # each gene loads strongly on one factor and weakly on the others
        loadings = rng.gamma(0.3, 0.2, size=(n_genes, factors.shape[1]))
        owner = rng.integers(factors.shape[1], size=n_genes)
        loadings[np.arange(n_genes), owner] += rng.gamma(2.0, 1.0, size=n_genes)
        loadings *= depth / (factors.mean(0) @ loadings.mean(0))  # mean of factors @ loadings.T, without forming it
        counts = poisson_counts(factors, loadings, rng)
    else:
        spatial = (quilt_fields if pattern == "quilt" else block_fields)(array_row, array_col, n_spatial_factors, rng)
        nonspatial = rng.random((n_spots, n_nonspatial_factors)) < NONSPATIAL_ON_PROBABILITY
        factors = np.hstack([spatial, nonspatial]).astype(np.float64)
        counts, loadings = pattern_counts(factors, rng, n_genes, expression_mean, background, nb_shape)
    n_factors = factors.shape[1]

    # spatially coherent groups: Voronoi cells of random domain centres
    centres = unit[rng.choice(n_spots, size=n_groups, replace=False)]
    group_idx = np.argmin(((unit[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    groups = pd.Categorical([f"domain_{g + 1}" for g in group_idx], categories=[f"domain_{g + 1}" for g in range(n_groups)])

    symbols, ids = gene_names(n_genes)
    if marker_genes_per_group:
        mcounts, msymbols, mids = marker_genes(group_idx, n_groups, marker_genes_per_group, depth, seed, n_genes)
        counts = sp.hstack([counts, mcounts], format="csr")
        symbols, ids = symbols + msymbols, ids + mids
        loadings = np.vstack([loadings, np.zeros((len(msymbols), n_factors))])  # not driven by any factor
    obs = pd.DataFrame(
        {"in_tissue": 1, "array_row": array_row, "array_col": array_col, "group": groups},
        index=pd.Index([f"spot_{i:05d}" for i in range(n_spots)], name="barcode"),
    )
    var = pd.DataFrame({"gene_ids": ids, "feature_types": "Gene Expression"}, index=pd.Index(symbols, name="symbol"))
    adata = ad.AnnData(X=counts, obs=obs, var=var)
    adata.obsm["spatial"] = xy.astype(np.float64)
    adata.obsm["true_factors"] = factors.astype(np.float32)
    adata.varm["true_loadings"] = loadings.astype(np.float32)
    adata.uns["true_factors_spatial"] = np.array([True] * n_spatial_factors + [False] * n_nonspatial_factors)

    hires, hires_scale = he_image(xy, spatial[:, 0], image_size or auto_image_size(n_spots), rng)
    lowres = hires[::2, ::2].copy()
    adata.uns["spatial"] = {
        library_id: {
            "images": {"hires": hires, "lowres": lowres},
            "scalefactors": {
                "tissue_hires_scalef": hires_scale,
                "tissue_lowres_scalef": hires_scale / 2,
                "spot_diameter_fullres": 0.55 * SPOT_SPACING_PX,
                "fiducial_diameter_fullres": 0.85 * SPOT_SPACING_PX,
            },
            "metadata": {"source": "tissuelens synthetic", "seed": seed, "pattern": pattern},
        }
    }
    return adata


def blocks_sections(n_spots: int = 900, n_sections: int = 1, n_blocks: int = 4, n_genes: int = 200, seed: int = 0,
                    n_nonspatial_factors: int = 1, **counts) -> ad.AnnData:
    """Tissues with known domains for the domain benchmark and tests: `n_sections` square grids of `n_spots`
    on the same coordinates (obs["section"] = S1, S2, ...), each with its own random layout of `n_blocks`
    blocks (block_fields) over a background; the gene programs are shared, so the domains are too: obs["domain"]
    is `block<f>` or `background`. Counts: the blocks pattern's model (pattern_counts; `counts` overrides its
    expression_mean, background, nb_shape)."""
    check_pattern("blocks", n_spots, "blocks_sections")
    rng = np.random.default_rng(seed)
    row, col, xy = square_grid(n_spots)
    fields = np.vstack([block_fields(row, col, n_blocks, rng) for _ in range(n_sections)])
    nonspatial = rng.random((len(fields), n_nonspatial_factors)) < NONSPATIAL_ON_PROBABILITY
    model = {"expression_mean": 20.0, "background": 0.2, "nb_shape": 10.0, **counts}
    x, _ = pattern_counts(np.hstack([fields, nonspatial]).astype(np.float64), rng, n_genes, **model)
    domain = np.where(fields.any(axis=1), np.char.add("block", (fields.argmax(axis=1) + 1).astype(str)), "background")
    obs = pd.DataFrame({"section": np.repeat([f"S{s + 1}" for s in range(n_sections)], n_spots),
                        "array_row": np.tile(row, n_sections), "array_col": np.tile(col, n_sections),
                        "domain": domain},
                       index=[f"S{s + 1}_spot_{i:05d}" for s in range(n_sections) for i in range(n_spots)])
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=gene_names(n_genes)[0]))
    adata.obsm["spatial"] = np.tile(xy, (n_sections, 1)).astype(np.float64)
    return adata
