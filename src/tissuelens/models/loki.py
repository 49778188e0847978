"""Loki / OmiCLIP checkpoints: open_clip CoCa models, their on-disk layout, loading, tiny random builds.

A Loki model directory (as `download_model` writes it) holds

* `checkpoint.pt`: the weights, as the Hugging Face repo `WangGuangyuLab/Loki` ships them: a torch
  file with either a plain open_clip state dict or an open_clip training checkpoint
  (`{"state_dict": {"module.<key>": tensor}, "epoch": ...}`). Read with `torch.load(weights_only=True)`.
* `open_clip_config.json` (optional): `{"model_cfg": <open_clip model config>, "preprocess_cfg": {...}}`,
  open_clip's own Hub layout. Without it the architecture is open_clip's built-in `coca_ViT-L-14`
  (OmiCLIP's); random checkpoints carry it because their tiny architecture is not built in.

Loading is the same for a real and a random checkpoint: the architecture (registered with open_clip
under a name derived from its config when it is not built in) is created with
`open_clip.create_model_and_transforms`, the state dict is checked key by key and shape by shape
against it (a CLIP or other non-CoCa checkpoint fails here with one line), loaded strictly, and the
model's own eval transform and `open_clip.get_tokenizer` come with it, as in `loki.utils.load_model`.

Also imported by the Loki conda env (Python 3.9, open_clip 2.26.1): keep to its packages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tissuelens.errors import InputError
from tissuelens.io import read_json

KIND = "loki"
ARCHITECTURE = "coca_ViT-L-14"  # OmiCLIP's architecture (open_clip built-in config)
WEIGHT_FILES = ("checkpoint.pt", "checkpoint.pth", "open_clip_pytorch_model.bin")
CONFIG_FILE = "open_clip_config.json"
MANIFEST = "tissuelens_model.json"
COCA_PREFIXES = ("visual.", "text.", "text_decoder.")
# a random checkpoint's tiny CoCa: the real family (attentional pooler, appended <cls>, multimodal
# decoder), the real tokenizer (CLIP BPE, vocab 49408, context 76), tiny widths
TINY = {
    "embed_dim": 16,
    "width": 32,
    "heads": 2,
    "layers": 2,
    "decoder_layers": 1,
    "image_size": 32,
    "patch_size": 8,
    "context_length": 76,
}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def coca_config(
    embed_dim: int, width: int, heads: int, layers: int, decoder_layers: int, image_size: int, patch_size: int, context_length: int
) -> dict:
    """An open_clip CoCa model config shaped like coca_ViT-L-14.json, with the given sizes."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": image_size,
            "layers": layers,
            "width": width,
            "head_width": width // heads,
            "patch_size": patch_size,
            "attentional_pool": True,
            "attn_pooler_heads": heads,
            "output_tokens": True,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,
            "width": width,
            "heads": heads,
            "layers": layers,
            "embed_cls": True,
            "output_tokens": True,
        },
        "multimodal_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,
            "width": width,
            "heads": heads,
            "layers": decoder_layers,
            "attn_pooler_heads": heads,
        },
        "custom_text": True,
    }


class _NoRandomInitWarning(logging.Filter):
    """open_clip warns 'initialized randomly' on the root logger; we load the weights right after."""

    def filter(self, record):
        return "No pretrained weights loaded" not in record.getMessage()


@contextmanager
def _quiet_random_init():
    root = logging.getLogger()
    flt = _NoRandomInitWarning()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _check_coca_cfg(cfg, where: str) -> None:
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise InputError(f"{where}: model_cfg is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    if "multimodal_cfg" not in cfg or not cfg.get("custom_text", False):
        raise InputError(f"{where}: model_cfg is not a CoCa config (no multimodal_cfg/custom_text); Loki is an open_clip CoCa model")
    if not cfg["vision_cfg"].get("attentional_pool") or not cfg["text_cfg"].get("embed_cls"):
        raise InputError(f"{where}: model_cfg is not CoCa-shaped (needs vision attentional_pool and text embed_cls)")


def _architecture_name(cfg: dict) -> str:
    """Register `cfg` with open_clip (it keys configs by file stem) under a name unique to its content."""
    import open_clip

    digest = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    name = f"tissuelens-coca-{digest}"
    if name not in open_clip.list_models():
        tmp = tempfile.mkdtemp(prefix="tissuelens-openclip-")
        path = os.path.join(tmp, f"{name}.json")
        with open(path, "w") as fh:
            json.dump(cfg, fh)
        try:
            open_clip.add_model_config(path)
        finally:
            os.remove(path)
            os.rmdir(tmp)
    return name


def read_state_dict(path: Path) -> dict:
    """The open_clip state dict in a torch weights file (plain, or a training checkpoint), weights_only."""
    import pickle

    import torch

    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(exc):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError, AttributeError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot read checkpoint with torch.load(weights_only=True) ({first})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise InputError(f"{path}: not a state dict (expected a dict of tensors, or one under 'state_dict')")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def check_state_dict(state: dict, expected: dict, path: Path, arch: str) -> None:
    """One-line InputError unless `state` has exactly the keys and shapes of `expected` (name -> shape)."""
    if not any(k.startswith("text_decoder.") for k in state) or "text.cls_emb" not in state:
        raise InputError(f"{path}: not a CoCa checkpoint (no text_decoder.* weights or text.cls_emb); Loki needs open_clip {arch}")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of other shape (e.g. {k} {tuple(state[k].shape)} != {tuple(expected[k])})")
        raise InputError(f"{path}: weights do not fit the {arch} CoCa architecture: {'; '.join(parts)} keys")


@dataclass
class LokiCheckpoint:
    path: Path
    weights: Path
    model_cfg: dict
    architecture: str
    preprocess_cfg: dict = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)
    builtin: bool = False  # architecture is open_clip's own coca_ViT-L-14 config (no open_clip_config.json)

    @property
    def untrained(self) -> bool:
        return bool(self.manifest.get("untrained", False))

    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    @property
    def d_model(self) -> int:
        """Width of the text encoder (its token activations)."""
        return int(self.model_cfg["text_cfg"].get("width", 512))

    @property
    def n_layers(self) -> int:
        return int(self.model_cfg["text_cfg"].get("layers", 12))

    @property
    def context_length(self) -> int:
        return int(self.model_cfg["text_cfg"].get("context_length", 77))

    @property
    def image_size(self) -> int:
        size = self.model_cfg["vision_cfg"].get("image_size", 224)
        return int(size if isinstance(size, int) else min(size))

    @property
    def patch_size(self) -> int:
        """The ViT patch: the smallest image patch that carries any information (our minimum crop)."""
        return int(self.model_cfg["vision_cfg"].get("patch_size", 16))

    def describe(self) -> dict:
        return {
            "path": str(self.path),
            "weights": self.weights.name,
            "architecture": self.architecture,
            "embed_dim": self.embed_dim,
            "text_width": self.d_model,
            "text_layers": self.n_layers,
            "context_length": self.context_length,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "untrained": self.untrained,
            "source": self.manifest.get("source"),
        }

    def expected_shapes(self) -> dict:
        """Parameter shapes of this architecture, from a model built on the meta device (no memory)."""
        import open_clip
        import torch

        cfg = {k: v for k, v in self.model_cfg.items() if k != "custom_text"}
        with torch.device("meta"):
            model = open_clip.CoCa(**cfg)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def validate(self) -> None:
        check_state_dict(read_state_dict(self.weights), self.expected_shapes(), self.weights, self.architecture)

    def load_model(self, device="cpu"):
        """(model in eval mode on `device`, image transform, tokenizer): what loki.utils.load_model returns."""
        import open_clip
        import torch

        name = ARCHITECTURE if self.builtin else _architecture_name(self.model_cfg)
        kwargs = {}
        for key, arg in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation")):
            if key in self.preprocess_cfg:
                kwargs[arg] = self.preprocess_cfg[key]
        torch.manual_seed(0)  # the random init is overwritten below; keep it deterministic anyway
        with _quiet_random_init():
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device="cpu", **kwargs)
        state = read_state_dict(self.weights)
        check_state_dict(state, {k: tuple(v.shape) for k, v in model.state_dict().items()}, self.weights, self.architecture)
        model.load_state_dict(state, strict=True)
        tokenizer = open_clip.get_tokenizer(name)
        return model.to(device).eval(), preprocess, tokenizer


def load_checkpoint(path: str | Path, dictionary_suffix: str | None = None, validate: bool = True) -> LokiCheckpoint:
    """Read and check a Loki model directory (weights file, optional config, CoCa-shaped weights)."""
    del dictionary_suffix  # Geneformer's; Loki has no dictionaries
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: checkpoint directory not found")
    weights = next((path / w for w in WEIGHT_FILES if (path / w).is_file()), None)
    if weights is None:
        found = sorted(p.name for p in path.glob("*.pt")) + sorted(p.name for p in path.glob("*.pth"))
        if len(found) != 1:
            raise InputError(f"{path}: no Loki weights ({' or '.join(WEIGHT_FILES)}{', or a single .pt file' if not found else '; several .pt files: ' + ', '.join(found)})")
        weights = path / found[0]
    config_file = path / CONFIG_FILE
    preprocess = {}
    if config_file.is_file():
        cfg_obj = read_json(config_file, expect=None)
        model_cfg = cfg_obj.get("model_cfg", cfg_obj) if isinstance(cfg_obj, dict) else None
        _check_coca_cfg(model_cfg, str(config_file))
        preprocess = cfg_obj.get("preprocess_cfg", {}) if isinstance(cfg_obj, dict) else {}
        architecture = str(cfg_obj.get("model_name", "custom CoCa")) if isinstance(cfg_obj, dict) else "custom CoCa"
    else:
        import open_clip

        model_cfg = open_clip.get_model_config(ARCHITECTURE)
        if model_cfg is None:
            raise InputError(f"open_clip has no built-in {ARCHITECTURE} config (open_clip_torch too old?)")
        architecture = ARCHITECTURE
    manifest_file = path / MANIFEST
    manifest = read_json(manifest_file) if manifest_file.is_file() else {}
    ckpt = LokiCheckpoint(path, weights, model_cfg, architecture, preprocess, manifest, builtin=not config_file.is_file())
    if validate:
        ckpt.validate()
    return ckpt


# -- random checkpoints ------------------------------------------------------------------------


def build_random(out: str | Path, *, seed: int = 0, training_layout: bool = True, **sizes) -> Path:
    """Write an untrained tiny CoCa (OmiCLIP's family) into directory `out` in Loki's layout.

    `training_layout` saves it the way open_clip's trainer does (and Loki's checkpoint.pt is):
    `{"epoch", "name", "state_dict": {"module.<key>": tensor}}`; False writes a plain state dict.
    """
    import open_clip
    import torch

    dims = dict(TINY)
    unknown = set(sizes) - set(dims)
    if unknown:
        raise InputError(f"random loki checkpoint: unknown size settings {sorted(unknown)}")
    dims.update({k: v for k, v in sizes.items() if v is not None})
    if dims["width"] % dims["heads"]:
        raise InputError(f"random loki checkpoint: width {dims['width']} is not divisible by heads {dims['heads']}")
    if dims["image_size"] % dims["patch_size"]:
        raise InputError(f"random loki checkpoint: image_size {dims['image_size']} is not a multiple of patch_size {dims['patch_size']}")
    cfg = coca_config(**dims)
    name = _architecture_name(cfg)
    torch.manual_seed(seed)
    with _quiet_random_init():
        model = open_clip.create_model(name, pretrained=None, device="cpu")
    # open_clip's CoCa never initialises its caption decoder's projection (torch.empty): do it, seeded,
    # so a random checkpoint is reproducible and finite
    decoder = getattr(model, "text_decoder", None)
    if decoder is not None and getattr(decoder, "text_projection", None) is not None:
        torch.nn.init.normal_(decoder.text_projection, std=decoder.text_projection.shape[0] ** -0.5)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise RuntimeError(f"random loki checkpoint: non-finite initial weights in {bad[0]}")
    if training_layout:
        obj = {"epoch": 0, "name": "tissuelens-random", "state_dict": {f"module.{k}": v for k, v in state.items()}}
    else:
        obj = state
    torch.save(obj, str(out / WEIGHT_FILES[0]))
    config = {
        "model_name": f"{ARCHITECTURE} family, tiny random",
        "model_cfg": cfg,
        "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "interpolation": "bicubic", "resize_mode": "shortest"},
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return out


def build_random_from_settings(out, settings: dict, seed: int, genes_h5ad: str | None = None) -> Path:
    """Registry hook: a random Loki checkpoint sized by a model entry's `random:` settings."""
    del genes_h5ad  # the text encoder reads symbols through CLIP's BPE vocabulary: no gene list needed
    sizes = {
        "width": settings.get("hidden_size"),
        "heads": settings.get("n_heads"),
        "layers": settings.get("n_layers"),
        "embed_dim": settings.get("embed_dim"),
        "image_size": settings.get("image_size"),
        "patch_size": settings.get("patch_size"),
        "context_length": settings.get("context_length"),
    }
    return build_random(out, seed=seed, **sizes)
