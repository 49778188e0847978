"""Fetching checkpoints: Hugging Face Hub snapshots (huggingface_hub) and local directories."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tissuelens.errors import InputError
from tissuelens.io import sha256_of


def _place(src: Path, dst: Path) -> None:
    """Hard-link `src` to `dst` when on the same file system (checkpoints are large), else copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_flat(folder: Path, dst: Path, what: str) -> list[str]:
    """Copy the plain files directly in `folder` (not its subfolders) into `dst`."""
    if not folder.is_dir():
        raise InputError(f"{folder}: {what} folder not found")
    names = []
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            if (dst / f.name).exists():
                raise InputError(f"{f}: file name clashes with another checkpoint file ({f.name})")
            _place(f.resolve(), dst / f.name)
            names.append(f.name)
    return names


def _sub(root: Path, sub: str | None) -> Path:
    sub = (sub or "").strip("/")
    return root / sub if sub else root


def download_huggingface(
    repo_id: str,
    out: Path,
    *,
    revision: str | None = None,
    subfolder: str | None = None,
    dictionaries: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
) -> dict:
    """Fetch `subfolder` (model files) and `dictionaries` (gene dictionaries) of a Hub repo into `out`.

    Uses the standard Hugging Face cache (HF_HOME / HF_HUB_CACHE, or `cache_dir`), so a snapshot that is
    already cached is used offline (HF_HUB_OFFLINE=1 or `local_files_only`). Files end up flat in `out`,
    the layout `load_checkpoint` reads.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = []
    for folder in (subfolder, dictionaries):
        folder = (folder or "").strip("/")
        patterns += [f"{folder}/*"] if folder else ["*.json", "*.safetensors", "*.bin", "*.pkl", "*.pt"]
    try:
        snapshot = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                allow_patterns=patterns,
                local_files_only=local_files_only,
            )
        )
    except LocalEntryNotFoundError:
        raise InputError(
            f"huggingface {repo_id}@{revision or 'main'}: not in the local Hugging Face cache and the Hub "
            "cannot be reached (offline?); download it on a machine with network access or use source: local"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise InputError(f"huggingface {repo_id}@{revision or 'main'}: {str(exc).splitlines()[0]}") from None
    out.mkdir(parents=True, exist_ok=True)
    files = _copy_flat(_sub(snapshot, subfolder), out, "model subfolder")
    if dictionaries and _sub(snapshot, dictionaries) != _sub(snapshot, subfolder):
        files += _copy_flat(_sub(snapshot, dictionaries), out, "dictionaries")
    return {"snapshot": str(snapshot), "files": files}


def copy_local(path: str, out: Path, *, subfolder: str | None = None, dictionaries: str | None = None) -> dict:
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{path}: local checkpoint directory not found")
    out.mkdir(parents=True, exist_ok=True)
    files = _copy_flat(_sub(root, subfolder), out, "model")
    if dictionaries and _sub(root, dictionaries) != _sub(root, subfolder):
        files += _copy_flat(_sub(root, dictionaries), out, "dictionaries")
    return {"files": files}


def verify_sha256(folder: Path, expected: dict[str, str]) -> None:
    for name, digest in (expected or {}).items():
        f = folder / name
        if not f.is_file():
            raise InputError(f"{f}: listed under sha256 but not in the checkpoint")
        actual = sha256_of(f)
        if actual.lower() != digest.lower():
            raise InputError(f"{f}: sha256 {actual} does not match the configured {digest}")
