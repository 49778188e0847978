"""The model registry: config `models:` entries -> checkpoint directories, dispatched on `kind`.

Each kind is a module with
* `KIND` (its name),
* `load_checkpoint(path, dictionary_suffix=None)` -> a checkpoint object with `.untrained` and `.describe()`,
* `build_random_from_settings(out, settings, seed, genes_h5ad)`: an untrained model of the real
  architecture in the real on-disk layout.

`fetch_model` writes `resources/models/<name>/` for any source and then loads it back through the
same `load_checkpoint` a downloaded checkpoint goes through, so a broken checkpoint fails at download
time. It adds one file to the model's own layout: `tissuelens_model.json` (kind, source, untrained).
"""

from __future__ import annotations

import copy
import importlib
import json
from pathlib import Path

import yaml

from tissuelens.config import SCHEMA_DIR, schema_defaults
from tissuelens.errors import InputError
from tissuelens.io import read_json
from tissuelens.models import hub

KINDS = {"geneformer": "tissuelens.models.geneformer", "loki": "tissuelens.models.loki", "tahoe": "tissuelens.models.tahoe"}
MANIFEST = "tissuelens_model.json"


def kind_module(kind: str):
    if kind not in KINDS:
        raise InputError(f"model kind '{kind}' is unknown (known: {', '.join(sorted(KINDS))})")
    return importlib.import_module(KINDS[kind])


def model_entry(models: dict | None, name: str) -> dict:
    """The config entry of model `name`, or InputError naming the known models."""
    models = models or {}
    if name not in models:
        raise InputError(f"config: model '{name}' is not defined under models: (defined: {', '.join(sorted(models)) or 'none'})")
    return models[name]


def random_settings(entry: dict) -> dict:
    """An entry's `random:` settings with the schema's defaults filled in (one source of defaults)."""
    schema = yaml.safe_load((SCHEMA_DIR / "models.schema.yaml").read_text())
    defaults = schema_defaults(schema["$defs"]["random"])
    out = copy.deepcopy(defaults)
    out.update(entry.get("random") or {})
    return out


def fetch_model(
    name: str,
    entry: dict,
    out: str | Path,
    *,
    genes_h5ad: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool = False,
):
    """Build or download model `name` into directory `out` (atomically) and return the loaded checkpoint."""
    from tissuelens.io import atomic_path

    module = kind_module(entry.get("kind", ""))
    source = entry.get("source")
    manifest = {"name": name, "kind": module.KIND, "source": source, "untrained": source == "random"}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        if source == "huggingface":
            info = hub.download_huggingface(
                entry["repo_id"],
                tmp,
                revision=entry.get("revision"),
                subfolder=entry.get("subfolder"),
                dictionaries=entry.get("dictionaries"),
                cache_dir=cache_dir,
                local_files_only=local_files_only,
            )
            manifest.update(repo_id=entry["repo_id"], revision=entry.get("revision", "main"), subfolder=entry.get("subfolder"))
        elif source == "local":
            info = hub.copy_local(entry["path"], tmp, subfolder=entry.get("subfolder"), dictionaries=entry.get("dictionaries"))
            manifest.update(path=str(entry["path"]))
        elif source == "random":
            settings = random_settings(entry)
            if settings.get("genes_from_dataset") and not genes_h5ad:
                raise InputError(f"models.{name}: genes_from_dataset is set but no dataset file was given (--genes-h5ad)")
            module.build_random_from_settings(tmp, settings, seed=settings["seed"], genes_h5ad=genes_h5ad)
            info = {"random": settings}
        else:
            raise InputError(f"models.{name}: source '{source}' is not one of huggingface, local, random")
        hub.verify_sha256(tmp, entry.get("sha256") or {})
        manifest.update(info)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            ckpt = module.load_checkpoint(tmp, entry.get("dictionary_suffix"))
            if hasattr(ckpt, "check_weights"):
                ckpt.check_weights()
        except InputError as exc:  # name the final directory, not the temporary one
            raise InputError(str(exc).replace(str(tmp), str(out))) from None
        manifest["untrained"] = bool(manifest["untrained"] or getattr(ckpt, "untrained", False))
        manifest["checkpoint"] = {k: v for k, v in ckpt.describe().items() if k != "path"}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return load_model_dir(out, entry.get("dictionary_suffix"))


def load_model_dir(path: str | Path, dictionary_suffix: str | None = None, kind: str | None = None):
    """Load a model directory written by `fetch_model` (kind from its manifest unless given)."""
    path = Path(path)
    manifest = path / MANIFEST
    if kind is None:
        if not manifest.is_file():
            raise InputError(f"{path}: no {MANIFEST}; not a model directory written by download_model")
        kind = read_json(manifest).get("kind")
        if not isinstance(kind, str):
            raise InputError(f"{manifest}: no model 'kind' in the manifest")
    return kind_module(kind).load_checkpoint(path, dictionary_suffix)
