"""Atomic writers: every output appears whole under its final name, or not at all."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories (the caller creates what it needs at the yielded path).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_parquet(frame, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp)


def to_h5ad(adata, path: str | os.PathLike) -> None:
    """`adata.write_h5ad(path)` in a form every stack's anndata reads, the Loki stack's 0.10.9 included:
    None values in `uns` (e.g. scanpy's `uns["log1p"]["base"]`) are dropped, since anndata >= 0.11 writes
    them with a 'null' encoding older releases cannot read (a missing key reads back as None anyway)."""
    drop_none(adata.uns)
    adata.write_h5ad(path)


def drop_none(mapping) -> None:
    """Remove None values from a nested mapping, in place."""
    for key in [k for k, v in mapping.items() if v is None]:
        del mapping[key]
    for value in mapping.values():
        if hasattr(value, "items"):
            drop_none(value)


def write_h5ad(adata, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        to_h5ad(adata, tmp)


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_default(obj):
    # numpy scalars and arrays appear in metrics; write them as plain numbers/lists
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_json(path: str | os.PathLike, expect: type | None = dict, missing: str = "file not found"):
    """Parse a JSON file; a missing or corrupt file, or a top-level value of another type than `expect`,
    is one InputError naming it (`missing` says what a missing file means)."""
    from tissuelens.errors import InputError, why

    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: {missing}") from None
    except (OSError, ValueError) as exc:  # ValueError covers JSONDecodeError and UnicodeDecodeError
        raise InputError(f"{path}: not valid JSON ({why(exc)})") from None
    if expect is not None and not isinstance(value, expect):
        want = "object" if expect is dict else "array" if expect is list else expect.__name__
        raise InputError(f"{path}: expected a JSON {want}, found {type(value).__name__}")
    return value


def read_h5ad(path: str | os.PathLike, backed: bool = False):
    """Read an AnnData file; a missing or damaged file is one InputError naming it."""
    import anndata as ad

    from tissuelens.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as exc:  # h5py/anndata raise OSError, KeyError, ValueError, TypeError on damage
        raise InputError(f"{path}: not a readable .h5ad file ({type(exc).__name__}: {exc})") from None
