"""Geneformer checkpoints: on-disk layout, version detection, loading, and tiny random builds.

A Geneformer model directory (as `download_model` writes it) holds the Hugging Face files of one
model (`config.json` plus `model.safetensors` or `pytorch_model.bin`, a `BertForMaskedLM`) and its gene
dictionaries beside them: `token_dictionary*.pkl`, `gene_median_dictionary*.pkl` and optionally
`ensembl_mapping_dict*.pkl` / `gene_name_id_dict*.pkl` (the `.json` spelling of each is accepted too).

The version is read from the files, never from a name: V2 dictionaries hold `<cls>` and `<eos>`
(sequences get them, input size 4096 for the released models), V1 dictionaries hold only `<pad>` and
`<mask>` (input size 2048). The input size is the config's `max_position_embeddings`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tissuelens.errors import InputError
from tissuelens.io import read_json
from tissuelens.models.pickles import load_dict_pickle, save_dict_pickle

KIND = "geneformer"
PAD, MASK, CLS, EOS = "<pad>", "<mask>", "<cls>", "<eos>"
SPECIAL = (PAD, MASK, CLS, EOS)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
DICT_STEMS = {
    "token": "token_dictionary",
    "median": "gene_median_dictionary",
    "mapping": "ensembl_mapping_dict",
    "names": "gene_name_id_dict",
}
# what a random checkpoint's files are tagged with (the real ones say gc30M, gc104M, ...)
RANDOM_TAG = "random"


@dataclass
class GeneformerCheckpoint:
    path: Path
    config: dict
    token_dict: dict[str, int]
    median_dict: dict[str, float]
    mapping_dict: dict[str, str] | None = None
    name_dict: dict[str, str] | None = None
    manifest: dict = field(default_factory=dict)

    # -- facts read from the files -------------------------------------------------------------
    @property
    def special_tokens(self) -> bool:
        return CLS in self.token_dict and EOS in self.token_dict

    @property
    def version(self) -> str:
        return "V2" if self.special_tokens else "V1"

    @property
    def model_input_size(self) -> int:
        return int(self.config["max_position_embeddings"])

    @property
    def n_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def d_model(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def pad_id(self) -> int:
        return self.token_dict[PAD]

    @property
    def cls_id(self) -> int | None:
        return self.token_dict.get(CLS)

    @property
    def eos_id(self) -> int | None:
        return self.token_dict.get(EOS)

    @property
    def untrained(self) -> bool:
        """Random weights: said by download_model's manifest, or by the config a random build wrote."""
        return bool(self.manifest.get("untrained", False) or self.config.get("tissuelens_untrained", False))

    @property
    def gene_tokens(self) -> dict[str, int]:
        """Genes that can be tokenised: in the token dictionary and with a median (special tokens excluded)."""
        return {g: t for g, t in self.token_dict.items() if g not in SPECIAL and g in self.median_dict}

    def id_to_name(self) -> dict[int, str]:
        return {t: g for g, t in self.token_dict.items()}

    def describe(self) -> dict:
        return {
            "path": str(self.path),
            "version": self.version,
            "model_input_size": self.model_input_size,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "vocab_size": int(self.config["vocab_size"]),
            "n_genes": len(self.gene_tokens),
            "untrained": self.untrained,
            "source": self.manifest.get("source"),
        }

    def load_model(self, device="cpu"):
        """The `BertForMaskedLM` in eval mode on `device` (safetensors, or torch weights_only via transformers)."""
        from transformers import BertForMaskedLM

        try:
            model = BertForMaskedLM.from_pretrained(str(self.path), output_hidden_states=True)
        except Exception as exc:  # noqa: BLE001 - safetensors/torch raise many types for a broken file
            first = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise InputError(f"{self.path}: cannot load model weights ({type(exc).__name__}: {first})") from None
        return model.to(device).eval()

    def check_weights(self) -> None:
        """Load the weights once (on CPU) so a broken file fails where it is fetched."""
        self.load_model("cpu")


def _find_one(path: Path, stem: str, suffix: str | None, required: bool) -> Path | None:
    tag = f"_{suffix}" if suffix else "*"
    found = sorted(p for ext in ("pkl", "json") for p in path.glob(f"{stem}{tag}.{ext}"))
    if not found:
        if required:
            raise InputError(f"{path}: checkpoint has no {stem}*.pkl or .json (Geneformer's gene dictionaries are required)")
        return None
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise InputError(f"{path}: several {stem} files ({names}); set dictionary_suffix in the model entry")
    return found[0]


def _read_dict(path: Path) -> dict:
    if path.suffix == ".json":
        return read_json(path)
    return load_dict_pickle(path)


def read_config(path: Path) -> dict:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise InputError(f"{path}: checkpoint has no config.json")
    cfg = read_json(cfg_file)
    if cfg.get("model_type") != "bert":
        raise InputError(f"{cfg_file}: model_type is {cfg.get('model_type')!r}, expected 'bert'")
    for key in ("vocab_size", "hidden_size", "num_hidden_layers", "max_position_embeddings"):
        if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
            raise InputError(f"{cfg_file}: '{key}' missing or not a positive integer")
    return cfg


def load_checkpoint(path: str | Path, dictionary_suffix: str | None = None) -> GeneformerCheckpoint:
    """Read and check a Geneformer model directory (config, weights present, dictionaries)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: checkpoint directory not found")
    cfg = read_config(path)
    if not any((path / w).is_file() for w in WEIGHT_FILES):
        raise InputError(f"{path}: checkpoint has no weights ({' or '.join(WEIGHT_FILES)})")

    files = {k: _find_one(path, stem, dictionary_suffix, required=k in ("token", "median")) for k, stem in DICT_STEMS.items()}
    token = _read_dict(files["token"])
    median = _read_dict(files["median"])
    for key, value in token.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < cfg["vocab_size"]:
            raise InputError(f"{files['token']}: token id of {key!r} is {value!r}, not an integer in [0, vocab_size={cfg['vocab_size']})")
    if len(set(token.values())) != len(token):
        raise InputError(f"{files['token']}: token ids are not unique")
    if PAD not in token:
        raise InputError(f"{files['token']}: no '{PAD}' token")
    if (CLS in token) != (EOS in token):
        raise InputError(f"{files['token']}: has one of '{CLS}'/'{EOS}' but not the other")
    if cfg.get("pad_token_id", 0) != token[PAD]:
        raise InputError(f"{path}: config pad_token_id {cfg.get('pad_token_id')} != dictionary '{PAD}' id {token[PAD]}")
    for key, value in median.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise InputError(f"{files['median']}: median of {key!r} is {value!r}, not a positive finite number")
    mapping = _read_dict(files["mapping"]) if files["mapping"] else None
    names = _read_dict(files["names"]) if files["names"] else None
    manifest_file = path / MANIFEST
    manifest = read_json(manifest_file) if manifest_file.is_file() else {}
    ckpt = GeneformerCheckpoint(path, cfg, token, {k: float(v) for k, v in median.items()}, mapping, names, manifest)
    if not ckpt.gene_tokens:
        raise InputError(f"{files['token']}: no gene is in both the token and the median dictionary")
    return ckpt


MANIFEST = "tissuelens_model.json"


# -- random checkpoints ------------------------------------------------------------------------


def build_random(
    out: str | Path,
    genes: list[str],
    medians: dict[str, float],
    *,
    version: str = "V2",
    n_layers: int = 2,
    hidden_size: int = 32,
    n_heads: int = 2,
    intermediate_size: int = 64,
    max_input_size: int | None = None,
    seed: int = 0,
    symbols: dict[str, str] | None = None,
) -> Path:
    """Write an untrained Geneformer of the real architecture and layout into directory `out`.

    Token ids follow the real dictionaries: `<pad>`=0, `<mask>`=1, (V2: `<cls>`=2, `<eos>`=3), then the
    genes in sorted Ensembl-id order. Every gene needs a positive median.
    """
    import torch
    from transformers import BertConfig, BertForMaskedLM

    if version not in ("V1", "V2"):
        raise InputError(f"random checkpoint: version must be V1 or V2, not {version!r}")
    if hidden_size % n_heads:
        raise InputError(f"random checkpoint: hidden_size {hidden_size} is not divisible by n_heads {n_heads}")
    genes = sorted({g.upper() for g in genes})
    if not genes:
        raise InputError("random checkpoint: empty gene list")
    missing = [g for g in genes if not medians.get(g, 0) > 0]
    if missing:
        raise InputError(f"random checkpoint: no positive median for {len(missing)} genes (e.g. {missing[0]})")
    specials = [PAD, MASK] + ([CLS, EOS] if version == "V2" else [])
    token = {s: i for i, s in enumerate(specials)}
    token.update({g: len(specials) + i for i, g in enumerate(genes)})
    max_input_size = max_input_size or (4096 if version == "V2" else 2048)

    config = BertConfig(
        vocab_size=len(token),
        hidden_size=hidden_size,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_input_size,
        hidden_act="relu",
        hidden_dropout_prob=0.02,
        attention_probs_dropout_prob=0.02,
        initializer_range=0.02,
        layer_norm_eps=1e-12,
        pad_token_id=token[PAD],
        type_vocab_size=2,
        position_embedding_type="absolute",
        architectures=["BertForMaskedLM"],
        tissuelens_untrained=True,  # travels with the files (local copies, re-uploads)
    )
    torch.manual_seed(seed)
    model = BertForMaskedLM(config).eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    save_dict_pickle(token, out / f"{DICT_STEMS['token']}_{RANDOM_TAG}.pkl")
    save_dict_pickle({g: float(medians[g]) for g in genes}, out / f"{DICT_STEMS['median']}_{RANDOM_TAG}.pkl")
    save_dict_pickle({g: g for g in genes}, out / f"{DICT_STEMS['mapping']}_{RANDOM_TAG}.pkl")
    if symbols:
        save_dict_pickle({s: g for g, s in symbols.items() if g.upper() in token}, out / f"{DICT_STEMS['names']}_{RANDOM_TAG}.pkl")
    return out


def random_medians(genes: list[str], seed: int) -> dict[str, float]:
    """Log-normal medians shaped like the real V1 dictionary (CP10k units, median ~2.7)."""
    rng = np.random.default_rng(seed)
    values = np.exp(rng.normal(np.log(2.7), 1.0, size=len(genes)))
    return {g: float(v) for g, v in zip(genes, values)}


def build_random_from_settings(out: str | Path, settings: dict, seed: int, genes_h5ad: str | None = None) -> Path:
    """`build_random` from a model entry's `random:` settings (see workflow/schemas/models.schema.yaml)."""
    from tissuelens.models.vocab import random_vocabulary

    genes, medians, symbols = random_vocabulary(settings, seed, genes_h5ad)
    return build_random(
        out,
        genes,
        medians,
        version=settings["version"],
        n_layers=settings["n_layers"],
        hidden_size=settings["hidden_size"],
        n_heads=settings["n_heads"],
        intermediate_size=settings["intermediate_size"],
        max_input_size=settings.get("max_input_size"),
        seed=seed,
        symbols=symbols,
    )
