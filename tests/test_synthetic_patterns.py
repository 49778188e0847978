"""Patterned simulations of the synthetic source: sharp-edged quilt and blocks factors on a square grid."""

import numpy as np
import pytest

from tissuelens.datasets.synthetic import QUILT_TILES, make_synthetic, pattern_counts
from tissuelens.errors import InputError


def _grid(adata, column):
    side = int(np.sqrt(adata.n_obs))
    out = np.empty((side, side))
    out[adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()] = adata.obsm["true_factors"][:, column]
    return out


def test_quilt_deals_every_tile_to_exactly_one_factor():
    a = make_synthetic(n_spots=36 * 36, n_genes=50, n_spatial_factors=4, seed=2, pattern="quilt", n_nonspatial_factors=2)
    assert a.obsm["true_factors"].shape == (1296, 6)
    assert a.uns["true_factors_spatial"].tolist() == [True] * 4 + [False] * 2
    fields = np.stack([_grid(a, f) for f in range(4)])
    assert set(np.unique(fields)) == {0.0, 1.0}  # two levels only: sharp edges
    on = fields > 0
    assert (on.sum(0) == 1).all()  # each spot belongs to one factor
    tile = 36 // QUILT_TILES
    for f in range(4):
        blocks = on[f].reshape(QUILT_TILES, tile, QUILT_TILES, tile)
        assert (blocks.all(axis=(1, 3)) | ~blocks.any(axis=(1, 3))).all()  # constant within each tile
        assert blocks.all(axis=(1, 3)).sum() == QUILT_TILES**2 // 4  # equal shares of the 36 tiles
    xy = a.obsm["spatial"]
    assert len(np.unique(xy[:, 0])) == len(np.unique(xy[:, 1])) == 36  # a square grid, not hexagonal


def test_blocks_are_one_rectangle_per_factor_in_its_own_cell():
    a = make_synthetic(n_spots=20 * 20, n_genes=30, n_spatial_factors=3, seed=5, pattern="blocks")
    ons = [_grid(a, f) > 0 for f in range(3)]
    for f, on in enumerate(ons):
        rows, cols = np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))
        assert on[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # a filled rectangle
        assert on.sum() == len(rows) * len(cols)
        assert 5 <= len(rows) <= 10 and 5 <= len(cols) <= 10  # half to all of a 10 x 10 layout cell
        r0, c0 = (f // 2) * 10, (f % 2) * 10  # 3 factors: a 2 x 2 layout of 10 x 10 cells
        assert rows.min() >= r0 and rows.max() < r0 + 10 and cols.min() >= c0 and cols.max() < c0 + 10
    assert not (ons[0] & ons[1]).any() and not (ons[1] & ons[2]).any()  # no overlap


def test_pattern_counts_follow_nsfs_benchmark_model():
    """Each gene owned by one factor; mean background + expression_mean where it is on, negative
    binomial variance μ + μ²/shape (checked on many spots at one on- and one off-level)."""
    rng = np.random.default_rng(0)
    factors = np.repeat([[1.0, 0.0], [0.0, 1.0]], 20000, axis=0)
    counts, loadings = pattern_counts(factors, rng, n_genes=6, expression_mean=20.0, background=0.2, nb_shape=10.0)
    assert ((loadings > 0).sum(1) == 1).all() and set(np.unique(loadings)) == {0.0, 20.0}
    y = counts.toarray().astype(float)
    gene = int(np.flatnonzero(loadings[:, 0])[0])
    on, off = y[:20000, gene], y[20000:, gene]
    assert on.mean() == pytest.approx(20.2, rel=0.02) and on.var() == pytest.approx(20.2 + 20.2**2 / 10, rel=0.05)
    assert off.mean() == pytest.approx(0.2, rel=0.05)


def test_non_spatial_pattern_factors_are_sparse_indicators():
    a = make_synthetic(n_spots=36 * 36, n_genes=40, n_spatial_factors=4, seed=3, pattern="blocks", n_nonspatial_factors=2)
    ns = a.obsm["true_factors"][:, 4:]
    assert set(np.unique(ns)) == {0.0, 1.0}
    assert np.all(np.abs(ns.mean(0) - 0.2) < 0.04)
    assert np.asarray(a.X.sum()) > 0 and a.X.dtype == np.int32


def test_smooth_is_still_the_demo():
    a = make_synthetic(n_spots=100, n_genes=20, seed=0)
    b = make_synthetic(n_spots=100, n_genes=20, seed=0, pattern="smooth", n_nonspatial_factors=1)
    np.testing.assert_array_equal(a.X.toarray(), b.X.toarray())


@pytest.mark.parametrize("kwargs, message", [
    ({"pattern": "stripes", "n_spots": 144}, "synthetic.pattern 'stripes' does not exist"),
    ({"pattern": "quilt", "n_spots": 100}, r"quilt pattern needs a full square grid of at least 12 x 12 = 144 spots, got 100"),
    ({"pattern": "blocks", "n_spots": 65}, r"blocks pattern needs a full square grid of at least 8 x 8 = 64 spots, got 65"),
])
def test_bad_patterns_are_one_error_line(kwargs, message):
    with pytest.raises(InputError, match=message) as err:
        make_synthetic(n_genes=20, **kwargs)
    assert "\n" not in str(err.value)
