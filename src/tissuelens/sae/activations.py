"""Token activations exported by the embed stage: validation and shuffled minibatch streaming.

Layout of `results/{dataset}/embed/{model}/activations/`:

* `layer_{k}.npy`: float16 array (n_tokens, d_model), one per exported layer, opened as a memmap;
* `index.parquet`: one row per token: `cell` (obs row), `obs_name`, `gene` (Ensembl id or a special
  token such as `<cls>`), `position`;
* `meta.json`: {model, kind, layers, d_model, n_tokens, n_cells, untrained, checkpoint}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from tissuelens.errors import InputError
from tissuelens.io import read_json

META_KEYS = ("model", "layers", "d_model", "n_tokens")
INDEX_COLUMNS = ("cell", "obs_name", "gene", "position")
_SCAN_ROWS = 65536  # rows per chunk when scanning a layer for NaN/inf


def is_special_token(gene: str) -> bool:
    """Special tokens (`<cls>`, `<eos>`, `<pad>`, ...) are written in angle brackets."""
    return gene.startswith("<") and gene.endswith(">")


@dataclass
class ActivationSet:
    """One layer of an activation export, validated; `array` is a read-only memmap."""

    directory: Path
    meta: dict
    layer: int
    array: np.ndarray
    index: pd.DataFrame
    rows: np.ndarray = field(repr=False)  # token rows used for training and analysis

    @property
    def path(self) -> Path:
        return self.directory / f"layer_{self.layer}.npy"

    @property
    def d_in(self) -> int:
        return int(self.array.shape[1])

    @property
    def model(self) -> str:
        return str(self.meta["model"])


def resolve_layer(layers: list[int], layer: int, where: str) -> int:
    """`layer` as exported; negative values count from the last exported layer (-1 = deepest)."""
    ordered = sorted(int(x) for x in layers)
    if layer < 0:
        if -layer > len(ordered):
            raise InputError(f"{where}: layer {layer} out of range; exported layers are {ordered}")
        return ordered[layer]
    if layer not in ordered:
        raise InputError(f"{where}: the model has no exported layer {layer}; exported layers are {ordered}")
    return layer


def read_meta(directory: Path) -> dict:
    meta_path = directory / "meta.json"
    if not directory.is_dir():
        raise InputError(f"{directory}: activations directory does not exist")
    if not meta_path.is_file():
        raise InputError(f"{meta_path}: missing (the embed stage writes it with the activations)")
    meta = read_json(meta_path)
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise InputError(f"{meta_path}: missing key(s) {', '.join(missing)}")
    if not isinstance(meta["layers"], list) or not meta["layers"]:
        raise InputError(f"{meta_path}: 'layers' must be a non-empty list of layer numbers")
    return meta


def check_finite(array: np.ndarray, path: Path, chunk: int = _SCAN_ROWS) -> None:
    """Scan the memmap chunk by chunk; name the first row holding NaN or inf."""
    for start in range(0, array.shape[0], chunk):
        block = np.asarray(array[start : start + chunk])
        finite = np.isfinite(block)
        if not finite.all():
            row = start + int(np.argmin(finite.all(axis=1)))
            raise InputError(f"{path}: non-finite activation (NaN or inf) at token row {row}")


def open_activations(
    directory: str | Path,
    layer: int = -1,
    include_special_tokens: bool = False,
    check_values: bool = True,
) -> ActivationSet:
    """Open one layer of an export and validate it against meta.json and index.parquet."""
    directory = Path(directory)
    meta = read_meta(directory)
    layer = resolve_layer(meta["layers"], int(layer), f"{directory / 'meta.json'} ({meta['model']})")
    path = directory / f"layer_{layer}.npy"
    if not path.is_file():
        raise InputError(f"{path}: missing, although meta.json lists layer {layer}")
    try:
        array = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    if array.ndim != 2:
        raise InputError(f"{path}: expected a 2-D (n_tokens, d_model) array, got shape {array.shape}")
    if array.dtype.kind != "f":
        raise InputError(f"{path}: expected floating-point activations, got dtype {array.dtype}")
    if array.shape[1] != int(meta["d_model"]):
        raise InputError(f"{path}: width {array.shape[1]} does not match d_model {meta['d_model']} in meta.json")
    if array.shape[0] != int(meta["n_tokens"]):
        raise InputError(f"{path}: {array.shape[0]} tokens but meta.json says n_tokens {meta['n_tokens']}")

    index_path = directory / "index.parquet"
    if not index_path.is_file():
        raise InputError(f"{index_path}: missing (one row per token: cell, obs_name, gene, position)")
    try:
        index = pd.read_parquet(index_path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise InputError(f"{index_path}: not a readable parquet table ({exc})") from None
    missing = [c for c in INDEX_COLUMNS if c not in index.columns]
    if missing:
        raise InputError(f"{index_path}: missing column(s) {', '.join(missing)}")
    if len(index) != array.shape[0]:
        raise InputError(f"{index_path}: {len(index)} rows but {path.name} holds {array.shape[0]} tokens")
    index = index.reset_index(drop=True)
    index["gene"] = index["gene"].astype(str)
    index["obs_name"] = index["obs_name"].astype(str)

    if include_special_tokens:
        rows = np.arange(len(index), dtype=np.int64)
    else:
        special = index["gene"].map(is_special_token).to_numpy(bool)
        rows = np.flatnonzero(~special).astype(np.int64)
    if rows.size == 0:
        raise InputError(f"{index_path}: no gene tokens to train on (only special tokens)")
    if check_values:
        check_finite(array, path)
    return ActivationSet(directory=directory, meta=meta, layer=layer, array=array, index=index, rows=rows)


def split_rows(rows: np.ndarray, n_eval: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out `n_eval` rows (at most a fifth) for evaluation; both parts stay sorted."""
    n_eval = int(min(max(n_eval, 0), rows.size // 5))
    rng = np.random.default_rng([seed, 7])
    chosen = np.zeros(rows.size, dtype=bool)
    chosen[rng.choice(rows.size, size=n_eval, replace=False)] = True
    return rows[~chosen], rows[chosen]


def gather(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows of a memmap in the given order, read in ascending file order (one pass over the pages)."""
    order = np.argsort(rows, kind="stable")
    out = np.empty((rows.size, array.shape[1]), dtype=np.float32)
    out[order] = array[rows[order]]
    return out


class ShuffledBatches(Iterator):
    """Endless stream of (batch_size, d) float32 torch batches from a memmap, for `SAETrainer`.

    Epoch e visits every row in `rows` exactly once, in a permutation drawn from (seed, e). Epochs are
    concatenated, so every batch is full: the tail of one epoch is topped up from the next.
    """

    def __init__(self, array: np.ndarray, rows: np.ndarray, batch_size: int, seed: int, device: str = "cpu"):
        if batch_size < 1:
            raise InputError(f"batch_size: must be at least 1, got {batch_size}")
        if len(rows) == 0:
            raise InputError("activations: no token rows to stream")
        self.array = array
        self.rows = np.asarray(rows, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.device = device
        self._row_stream = self.row_batches()

    def epoch_order(self, epoch: int) -> np.ndarray:
        return self.rows[np.random.default_rng([self.seed, epoch]).permutation(self.rows.size)]

    def row_batches(self) -> Iterator[np.ndarray]:
        """Endless row-index batches (the order the data batches follow)."""
        epoch, pending = 0, np.empty(0, dtype=np.int64)
        while True:
            order = np.concatenate([pending, self.epoch_order(epoch)])
            epoch += 1
            n_full = order.size // self.batch_size
            for b in range(n_full):
                yield order[b * self.batch_size : (b + 1) * self.batch_size]
            pending = order[n_full * self.batch_size :]

    def skip(self, n_batches: int) -> None:
        """Advance past `n_batches` batches without reading them (resuming a checkpointed run)."""
        for _ in range(int(n_batches)):
            next(self._row_stream)

    def __next__(self):
        import torch

        rows = next(self._row_stream)
        return torch.from_numpy(gather(self.array, rows)).to(self.device)


def epoch_batches(array: np.ndarray, rows: np.ndarray, batch_size: int, seed: int, epoch: int = 0):
    """One epoch as numpy batches (last one may be short): yields (row_indices, activations)."""
    order = rows[np.random.default_rng([seed, epoch]).permutation(len(rows))]
    for start in range(0, order.size, batch_size):
        chunk = order[start : start + batch_size]
        yield chunk, gather(array, chunk)


def sequential_batches(array: np.ndarray, rows: np.ndarray, batch_size: int):
    """Rows in file order, for evaluation and analysis: yields (row_indices, float32 activations)."""
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    for start in range(0, rows.size, batch_size):
        chunk = rows[start : start + batch_size]
        yield chunk, np.asarray(array[chunk], dtype=np.float32)
