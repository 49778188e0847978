"""`cell_activations.npz`: per-cell mean SAE feature activations, one row per preprocessed cell.

The file is scipy's sparse npz (`scipy.sparse.load_npz` reads it) with one more array, `exported`:
True for cells whose tokens reached the SAE. Cells the embed stage did not export
(`embed.activations.max_cells`) are zero rows that must not read as "no activity", so readers mask them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from tissuelens.errors import InputError, why


def save(path: str | Path, matrix, rows: np.ndarray, n_cells: int) -> None:
    """Write `matrix` (exported cells x features) at row positions `rows` of an n_cells-row matrix."""
    place = sp.csr_matrix((np.ones(rows.size), (rows, np.arange(rows.size))), shape=(n_cells, rows.size))
    full = sp.csr_matrix(place @ matrix, dtype=np.float32)
    exported = np.zeros(n_cells, dtype=bool)
    exported[rows] = True
    with open(path, "wb") as fh:  # a handle, so numpy does not append a second ".npz"
        np.savez_compressed(fh, format=b"csr", shape=np.array(full.shape), data=full.data, indices=full.indices,
                            indptr=full.indptr, exported=exported)


def load(path: str | Path) -> tuple[sp.csc_matrix, np.ndarray]:
    """(cells x features activations, exported mask); files without a mask count every cell as exported."""
    try:
        matrix = sp.load_npz(path).tocsc()
        with np.load(path) as npz:
            exported = npz["exported"].astype(bool) if "exported" in npz.files else np.ones(matrix.shape[0], bool)
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"{path}: corrupt sparse matrix ({why(exc, 160)})") from None
    if exported.shape != (matrix.shape[0],):
        raise InputError(f"{path}: 'exported' mask has {exported.size} entries for {matrix.shape[0]} cells")
    return matrix, exported
