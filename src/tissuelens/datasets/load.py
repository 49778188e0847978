"""Dispatch a dataset entry to its source and return an AnnData in the common contract."""

from __future__ import annotations

from pathlib import Path

from tissuelens.datasets import contract, readers, remote, synthetic
from tissuelens.datasets.platforms import PLATFORMS, read_platform
from tissuelens.errors import InputError


def load_dataset(dataset: str, entry: dict, seed: int, cache_dir: Path):
    source = entry.get("source")
    if source == "synthetic":
        adata = synthetic.make_synthetic(seed=seed, library_id=dataset, **entry.get("synthetic", {}))
        where = f"synthetic dataset '{dataset}'"
    elif source == "local":
        where = entry["path"]
        adata = readers.read_local(where)
    elif source == "squidpy":
        where = f"squidpy dataset '{entry['name']}'"
        adata = remote.load_squidpy(entry["name"], cache_dir)
    elif source == "scanpy":
        where = f"scanpy dataset '{entry['name']}'"
        adata = remote.load_scanpy(entry["name"], cache_dir)
    elif source == "url":
        where = entry["url"]
        adata = remote.load_url(entry["url"], cache_dir, entry.get("sha256"))
    elif source in PLATFORMS:
        where = entry["path"]
        adata = read_platform(source, dataset, entry)
    else:
        known = ", ".join(("synthetic", "local", "squidpy", "scanpy", "url", *PLATFORMS))
        raise InputError(f"datasets.{dataset}.source: unknown source '{source}' ({known})")
    return contract.finalize(adata, entry, where, dataset, seed)
