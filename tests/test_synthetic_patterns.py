"""Patterned simulations of the synthetic source: sharp-edged quilt and blocks factors on a square grid."""

import numpy as np
import pytest

from tissuelens.datasets.synthetic import QUILT_TILES, make_synthetic
from tissuelens.errors import InputError


def _grid(adata, column):
    side = int(np.sqrt(adata.n_obs))
    out = np.empty((side, side))
    out[adata.obs["array_row"].to_numpy(), adata.obs["array_col"].to_numpy()] = np.log(adata.obsm["true_factors"][:, column])
    return out


def test_quilt_deals_every_tile_to_exactly_one_factor():
    a = make_synthetic(n_spots=36 * 36, n_genes=50, n_spatial_factors=4, seed=2, pattern="quilt", n_nonspatial_factors=2)
    assert a.obsm["true_factors"].shape == (1296, 6)
    assert a.uns["true_factors_spatial"].tolist() == [True] * 4 + [False] * 2
    logs = np.stack([_grid(a, f) for f in range(4)])
    np.testing.assert_allclose(np.abs(logs), 1.0, rtol=1e-6)  # two levels only: sharp edges
    on = logs > 0
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
