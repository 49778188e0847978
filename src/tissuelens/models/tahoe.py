"""Tahoe-x1 checkpoints: the Hugging Face layout of `tahoebio/Tahoe-x1` (`{70m,1b,3b}-model/`).

A Tahoe model directory holds `vocab.json` (token -> id; `<pad>`, `<cls>` and Ensembl ids),
`model_config.yml`, `collator_config.yml` and the weights, `model.safetensors` (Hub) or a composer
`best-model.pt`. Reading and checking the files needs only yaml/json; building the model needs the
`tahoe-x1` package (its own stack: envs/tahoe.yaml or the container), so `load_model` imports it lazily
and says so when it is missing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from tissuelens.errors import InputError
from tissuelens.io import read_json

KIND = "tahoe"
WEIGHT_FILES = ("model.safetensors", "best-model.pt")
MANIFEST = "tissuelens_model.json"
COLLATOR_DEFAULTS = {"pad_token_id": 0, "pad_value": -2, "num_bins": 51, "do_binning": True, "right_binning": False,
                     "keep_first_n_tokens": 1, "sampling": True}


def tahoe_available() -> bool:
    return importlib.util.find_spec("tahoe_x1") is not None


def _yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise InputError(f"{path}: missing (a Tahoe-x1 model folder has vocab.json, model_config.yml, collator_config.yml)")
    try:
        obj = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a YAML mapping")
    return obj


@dataclass
class TahoeCheckpoint:
    path: Path
    weights: Path
    vocab: dict
    model_config: dict
    collator_config: dict
    manifest: dict = field(default_factory=dict)

    @property
    def untrained(self) -> bool:
        return bool(self.manifest.get("untrained", False))

    @property
    def d_model(self) -> int:
        return int(self.model_config["d_model"])

    @property
    def n_layers(self) -> int:
        return int(self.model_config["n_layers"])

    def collator(self, key):
        return self.collator_config.get(key, COLLATOR_DEFAULTS.get(key))

    def describe(self) -> dict:
        return {"path": str(self.path), "weights": self.weights.name, "d_model": self.d_model, "n_layers": self.n_layers,
                "n_heads": self.model_config.get("n_heads"), "vocab_size": len(self.vocab),
                "num_bins": self.collator("num_bins"), "untrained": self.untrained, "source": self.manifest.get("source")}

    def load_model(self, device, attn_impl: str | None = None):
        """`ComposerTX` in eval mode, as `ComposerTX.from_hf` builds it, from this folder (tahoe-x1 needed)."""
        if not tahoe_available():
            raise InputError(f"{self.path}: the tahoe-x1 package is not installed here; run the Tahoe rule in its container or envs/tahoe.yaml")
        import torch
        from omegaconf import OmegaConf as om
        from tahoe_x1.model import ComposerTX

        from tissuelens.embed.tahoe import attention_impl

        model_cfg = om.create(self.model_config)
        coll_cfg = om.create(self.collator_config)
        impl = attn_impl or attention_impl()
        model_cfg["attn_config"]["attn_impl"] = impl
        model_cfg["attn_config"]["use_attn_mask"] = impl != "flash"
        model_cfg["do_mlm"] = False
        model_cfg["return_gene_embeddings"] = False
        strict = True
        if coll_cfg.get("use_chem_token", False):  # no drugs at inference (from_hf with use_chem_inf=False)
            coll_cfg["use_chem_token"] = False
            model_cfg.pop("chemical_encoder", None)
            coll_cfg.pop("drug_to_id_path", None)
            strict = False
        if self.weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(self.weights))
        else:  # composer checkpoints hold training state besides the weights; trusted local file only
            state = torch.load(str(self.weights), map_location="cpu", weights_only=False)["state"]["model"]
        model = ComposerTX(model_config=model_cfg, collator_config=coll_cfg)
        try:
            model.load_state_dict(state, strict=strict)
        except RuntimeError as exc:
            raise InputError(f"{self.weights}: weights do not fit model_config.yml ({str(exc).splitlines()[0]})") from None
        return model.to(device).eval()


def load_checkpoint(path: str | Path, dictionary_suffix: str | None = None) -> TahoeCheckpoint:
    del dictionary_suffix
    from tissuelens.embed.tahoe import read_vocab

    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: checkpoint directory not found")
    weights = next((path / w for w in WEIGHT_FILES if (path / w).is_file()), None)
    if weights is None:
        raise InputError(f"{path}: no Tahoe-x1 weights ({' or '.join(WEIGHT_FILES)})")
    vocab = read_vocab(path / "vocab.json")
    model_cfg = _yaml(path / "model_config.yml")
    coll_cfg = _yaml(path / "collator_config.yml")
    for key in ("d_model", "n_layers", "n_heads"):
        if not isinstance(model_cfg.get(key), int) or model_cfg[key] <= 0:
            raise InputError(f"{path / 'model_config.yml'}: '{key}' missing or not a positive integer")
    pad = coll_cfg.get("pad_token_id", COLLATOR_DEFAULTS["pad_token_id"])
    if vocab.get("<pad>") != pad:
        raise InputError(f"{path / 'collator_config.yml'}: pad_token_id {pad} != vocab.json '<pad>' id {vocab.get('<pad>')}")
    manifest_file = path / MANIFEST
    manifest = read_json(manifest_file) if manifest_file.is_file() else {}
    return TahoeCheckpoint(path, weights, vocab, model_cfg, coll_cfg, manifest)


def build_random_from_settings(out, settings: dict, seed: int, genes_h5ad: str | None = None):
    """Random Tahoe checkpoints need tahoe-x1 (TXModel, llm-foundry blocks); not offered without it."""
    raise InputError(
        "models: source random is not available for kind tahoe (building TXModel needs the tahoe-x1 package and its "
        "llm-foundry stack); point the entry at the Hub (tahoebio/Tahoe-x1, subfolder 70m-model) or a local folder"
    )
