"""Token-level activations on disk, the contract the SAE stage reads (any model kind).

`<dir>/layer_<k>.npy`: float16 (n_tokens, d_model), one per exported layer, opened with
`np.load(path, mmap_mode="r")`; `<dir>/index.parquet`: one row per token, in file row order, with
`cell` (row in obs), `obs_name`, `gene` (Ensembl id, or a special token's name) and `position`
(index in the model's input sequence); `<dir>/meta.json`: {model, kind, layers, d_model, n_tokens,
n_cells, untrained, checkpoint, ...}.

`ActivationWriter` preallocates the memmaps from the index (so batches may arrive in any order) and
checks on close that every row was written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from tissuelens.io import read_json

INDEX_COLUMNS = ("cell", "obs_name", "gene", "position")


def layer_file(folder: str | Path, layer: int) -> Path:
    return Path(folder) / f"layer_{int(layer)}.npy"


class ActivationWriter:
    def __init__(self, folder: str | Path, layers: list[int], d_model: int, index: pd.DataFrame, meta: dict):
        missing = [c for c in INDEX_COLUMNS if c not in index.columns]
        if missing:
            raise ValueError(f"activation index lacks columns {missing}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.layers = [int(k) for k in layers]
        self.d_model = int(d_model)
        self.index = index.reset_index(drop=True)
        self.meta = dict(meta)
        n = len(self.index)
        self._arrays = {
            k: np.lib.format.open_memmap(layer_file(self.folder, k), mode="w+", dtype=np.float16, shape=(n, self.d_model))
            for k in self.layers
        }
        self._written = {k: np.zeros(n, dtype=bool) for k in self.layers}

    @property
    def n_tokens(self) -> int:
        return len(self.index)

    def write(self, layer: int, rows: np.ndarray | slice, values: np.ndarray) -> None:
        """Store `values` (n, d_model) at token rows `rows` of layer `layer` (cast to float16)."""
        values = np.asarray(values)
        if values.ndim != 2 or values.shape[1] != self.d_model:
            raise ValueError(f"activations of shape {values.shape}, expected (n, {self.d_model})")
        self._arrays[layer][rows] = values.astype(np.float16)
        self._written[layer][rows] = True

    def close(self) -> dict:
        for k, done in self._written.items():
            if not done.all():
                raise RuntimeError(f"layer {k}: {int((~done).sum())} of {done.size} activation rows were never written")
        for arr in self._arrays.values():
            arr.flush()
        self._arrays.clear()
        idx = self.index.astype({"cell": np.int64, "position": np.int32})
        idx["obs_name"] = idx["obs_name"].astype(str)
        idx["gene"] = idx["gene"].astype(str)
        idx.to_parquet(self.folder / "index.parquet", index=False)
        meta = {
            **self.meta,
            "layers": self.layers,
            "d_model": self.d_model,
            "n_tokens": self.n_tokens,
            "n_cells": int(idx["cell"].nunique()),
            "dtype": "float16",
            "files": {str(k): layer_file(self.folder, k).name for k in self.layers},
        }
        (self.folder / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return meta


def read_activations(folder: str | Path, layer: int | None = None):
    """(memmap of one layer, index table, meta) — a reader for tests and downstream stages."""
    folder = Path(folder)
    meta = read_json(folder / "meta.json")
    layer = meta["layers"][0] if layer is None else layer
    return np.load(layer_file(folder, layer), mmap_mode="r"), pd.read_parquet(folder / "index.parquet"), meta
