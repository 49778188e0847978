"""Remote sources: squidpy and scanpy dataset functions, and plain URLs (.h5ad or Visium .tar.gz)."""

from __future__ import annotations

import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import anndata as ad

from tissuelens.datasets.readers import read_local
from tissuelens.errors import InputError
from tissuelens.io import atomic_path, sha256_of

SQUIDPY_DATASETS = (
    "four_i", "imc", "seqfish", "visium_hne_adata", "visium_hne_adata_crop", "visium_fluo_adata",
    "visium_fluo_adata_crop", "sc_mouse_cortex", "mibitof", "merfish", "slideseqv2", "visium",
)
SQUIDPY_ALIASES = {"visium_hne": "visium_hne_adata", "visium_fluo": "visium_fluo_adata"}
SCANPY_DATASETS = ("pbmc3k", "pbmc3k_processed", "pbmc68k_reduced", "paul15", "moignard15", "krumsiek11", "burczynski06")


def load_squidpy(name: str, cache_dir: Path) -> ad.AnnData:
    import squidpy as sq

    func_name = SQUIDPY_ALIASES.get(name, name)
    if func_name not in SQUIDPY_DATASETS or not hasattr(sq.datasets, func_name):
        raise InputError(f"squidpy dataset '{name}': unknown (choose one of {', '.join(SQUIDPY_DATASETS)})")
    cache_dir.mkdir(parents=True, exist_ok=True)
    return getattr(sq.datasets, func_name)(path=cache_dir / f"{func_name}.h5ad")


def load_scanpy(name: str, cache_dir: Path) -> ad.AnnData:
    import scanpy as sc

    if name not in SCANPY_DATASETS:
        raise InputError(f"scanpy dataset '{name}': unknown (choose one of {', '.join(SCANPY_DATASETS)})")
    cache_dir.mkdir(parents=True, exist_ok=True)
    sc.settings.datasetdir = cache_dir
    return getattr(sc.datasets, name)()


def fetch(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Download `url` to `dest` (http, https or file), verifying sha256 before the file is kept."""
    if dest.exists() and (sha256 is None or sha256_of(dest) == sha256.lower()):
        return dest
    with atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise InputError(f"{url}: download failed ({exc})") from None
        if sha256 is not None:
            got = sha256_of(tmp)
            if got != sha256.lower():
                raise InputError(f"{url}: sha256 mismatch (expected {sha256.lower()}, got {got})")
    return dest


def load_url(url: str, cache_dir: Path, sha256: str | None = None) -> ad.AnnData:
    name = Path(urllib.request.url2pathname(url.split("?")[0].rstrip("/"))).name or "download"
    if not (name.endswith(".h5ad") or name.endswith(".tar.gz") or name.endswith(".tgz") or name.endswith(".h5")):
        raise InputError(f"{url}: expected a .h5ad, .h5 or .tar.gz (Visium folder) URL")
    local = fetch(url, cache_dir / name, sha256)
    if name.endswith((".tar.gz", ".tgz")):
        return read_local(_unpack_visium(local, cache_dir / "visium"))
    return read_local(local)


def _unpack_visium(archive: Path, dest: Path) -> Path:
    """Extract a Visium tarball safely; return the folder holding filtered_feature_bc_matrix.h5."""
    if not dest.exists():
        with atomic_path(dest) as tmp, tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    found = sorted(dest.rglob("filtered_feature_bc_matrix.h5"))
    if not found:
        raise InputError(f"{archive}: archive holds no filtered_feature_bc_matrix.h5")
    return found[0].parent
