"""cell_activations.npz: rows for every preprocessed cell, with a mask for cells that were not exported."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from tissuelens.errors import InputError
from tissuelens.report.plots import plt, spatial_panel
from tissuelens.sae import cell_activations


def test_rows_land_in_place_and_unexported_cells_are_masked(tmp_path):
    path = tmp_path / "cell_activations.npz"
    exported_rows = np.array([3, 0])
    cell_activations.save(path, sp.csr_matrix(np.array([[1.0, 0.0, 2.0], [0.0, 5.0, 0.0]])), exported_rows, 4)
    assert [p.name for p in tmp_path.iterdir()] == ["cell_activations.npz"]
    plain = sp.load_npz(path)  # still scipy's format
    assert plain.shape == (4, 3) and plain.dtype == np.float32
    matrix, exported = cell_activations.load(path)
    assert np.array_equal(matrix.toarray(), [[0, 5, 0], [0, 0, 0], [0, 0, 0], [1, 0, 2]])
    assert exported.tolist() == [True, False, False, True]


def test_file_without_mask_counts_every_cell_and_corrupt_file_is_named(tmp_path):
    old = tmp_path / "old.npz"
    sp.save_npz(old, sp.csr_matrix(np.eye(3)))
    assert cell_activations.load(old)[1].tolist() == [True] * 3
    bad = tmp_path / "cell_activations.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(InputError, match=r"cell_activations.npz: corrupt sparse matrix"):
        cell_activations.load(bad)


def test_spatial_panel_draws_missing_values_grey():
    fig, ax = plt().subplots()
    spatial_panel(ax, np.array([[0, 0], [1, 0], [0, 1]]), np.array([1.0, np.nan, 2.0]), categorical=False)
    fig.canvas.draw()  # colours are mapped at draw time
    colours = ax.collections[0].get_facecolors()
    assert len(colours) == 3
    assert np.allclose(colours[1][:3], 0.827, atol=0.01)  # lightgrey
    assert not np.allclose(colours[0][:3], colours[1][:3])
    plt().close(fig)
