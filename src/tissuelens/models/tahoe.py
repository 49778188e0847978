"""Tahoe-x1 checkpoints: the Hugging Face layout of `tahoebio/Tahoe-x1` (`{70m,1b,3b}-model/`).

A Tahoe model directory holds `vocab.json` (token -> id; `<pad>`, `<cls>` and Ensembl ids),
`model_config.yml`, `collator_config.yml` and the weights, `model.safetensors` (Hub) or a composer
`best-model.pt`. Reading and checking the files needs only yaml/json; building the model needs the
`tahoe-x1` package (its own stack: the container or workflow/envs/tahoe.yaml on a GPU, workflow/envs/tahoe_cpu.yaml on a
CPU), so `load_model` imports it lazily and says so when it is missing.

Attention. tahoe-x1 1.0.0 supports only `attn_impl: flash` (its README): its `TXEncoder.forward` always
calls llm-foundry's `gen_flash_attn_padding_info`, a NameError without flash-attn, and with
`use_attn_mask` it unsqueezes a (B, S, S) mask into a 5-D bias that cannot broadcast. So models are built
with `use_attn_mask: False` and, for llm-foundry's torch attention, the encoder's forward is replaced on
that one instance by `masked_encoder_forward`: the same layers and final norm, with the padded keys
masked by a (B, 1, 1, S) bias (and the generative-token rule of `_make_mask` as a (B, 1, S, S) bias when a
batch has generative tokens, which inference never has). A cell then gets the embedding it gets alone.
"""

from __future__ import annotations

import importlib.util
import json
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
            raise InputError(f"{self.path}: the tahoe-x1 package is not installed here; run the Tahoe rule in its container or workflow/envs/tahoe.yaml")
        import torch
        from omegaconf import OmegaConf as om
        from tahoe_x1.model import ComposerTX

        from tissuelens.embed.tahoe.encode import attention_impl

        model_cfg = om.create(self.model_config)
        coll_cfg = om.create(self.collator_config)
        impl = attn_impl or attention_impl()
        model_cfg["attn_config"]["attn_impl"] = impl
        model_cfg["attn_config"]["use_attn_mask"] = False  # see the module docstring
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
        if impl != "flash":
            use_masked_encoder(model.model.transformer_encoder)
        return model.to(device).eval()


def masked_encoder_forward(self, total_embs, key_padding_mask=None, gen_mask=None):
    """`TXEncoder.forward` of tahoe-x1 1.0.0 for llm-foundry's torch attention, with the padding masked.

    As upstream: every block gets `attn_bias`, then the final norm. Differences: no flash padding info
    (the torch attention does not read it), and the bias is built to broadcast to (B, heads, S, S):
    padded keys (key_padding_mask False) get the dtype's minimum, as upstream writes it; generative
    rows see the perceptual columns and themselves (upstream's `_make_mask` rule). Padded rows are
    zeroed after the final norm, so `cell_emb_style: avg-pool` sums only a cell's own tokens (its mean
    over the padded length differs from the cell's alone by a factor, which the L2 normalisation of
    the embeddings removes)."""
    import torch

    b, s = total_embs.shape[:2]
    allowed = torch.ones(b, 1, 1, s, dtype=torch.bool, device=total_embs.device)
    if gen_mask is not None and bool(gen_mask.any()):
        eye = torch.eye(s, dtype=torch.bool, device=total_embs.device)
        allowed = ((~gen_mask).unsqueeze(1) | (gen_mask.unsqueeze(2) & eye)).unsqueeze(1)  # (B, 1, S, S)
    if key_padding_mask is not None:
        allowed = allowed & key_padding_mask.view(b, 1, 1, s)
    bias = torch.zeros(allowed.shape, dtype=total_embs.dtype, device=total_embs.device)
    bias = bias.masked_fill(~allowed, torch.finfo(total_embs.dtype).min)
    for block in self.layers:
        total_embs = block(total_embs, attn_bias=bias, flash_attn_padding_info=None)
    if self.use_norm:
        total_embs = self.norm(total_embs)
    if key_padding_mask is not None:
        total_embs = total_embs.masked_fill(~key_padding_mask.unsqueeze(-1), 0.0)
    return total_embs


def use_masked_encoder(encoder) -> None:
    """Give one `TXEncoder` instance `masked_encoder_forward` (the class and other models are untouched)."""
    import types

    encoder.forward = types.MethodType(masked_encoder_forward, encoder)


def load_checkpoint(path: str | Path, dictionary_suffix: str | None = None) -> TahoeCheckpoint:
    del dictionary_suffix
    from tissuelens.embed.tahoe.prepare import read_vocab

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


SPECIAL_TOKENS = ("<pad>", "<cls>", "<eoc>")


def tiny_configs(vocab_size: int, *, n_layers: int, d_model: int, n_heads: int, expansion_ratio: int,
                 cell_emb_style: str = "cls") -> tuple[dict, dict]:
    """(model_config.yml, collator_config.yml) of a small TXModel, shaped like tahoe-x1's own configs
    (configs/test_run.yaml of the repository: pre-norm, GQA attention, continuous value encoder)."""
    model = {
        "name": "tahoex", "vocab_size": vocab_size, "d_model": d_model, "n_layers": n_layers, "n_heads": n_heads,
        "expansion_ratio": expansion_ratio, "init_device": "cpu", "standard_scale_outputs": False,
        "transformer_activation": "relu", "norm_scheme": "pre", "use_generative_training": True,
        "use_cell_conditioned_generation": False, "use_glu": False, "cell_emb_style": cell_emb_style,
        "attn_config": {"attn_impl": "flash", "attn_type": "grouped_query_attention", "kv_n_heads": n_heads,
                        "attn_pdrop": 0.0, "use_attn_mask": False},
        "norm_config": {"norm_type": "layernorm", "eps": 1.0e-5},
        "expression_encoder": {"input_emb_style": "continuous", "dropout": 0.1, "max_value": 512, "activation": "relu",
                               "use_norm": True},
        "gene_encoder": {"use_norm": True},
        "mvc": {"arch_style": "inner product", "query_activation": "sigmoid", "scaled_dot_product": True},
        "expression_decoder": {"n_outputs": 1, "n_layers": 1, "activation": "leaky_relu"},
    }
    collator = {"pad_token_id": 0, "pad_value": -2, "mask_value": -1, "num_bins": 51, "do_binning": True,
                "right_binning": False, "keep_first_n_tokens": 1, "use_chem_token": False, "do_padding": True,
                "sampling": True, "max_length": 1024}
    return model, collator


def build_random(out, genes: list[str], *, n_layers: int = 2, d_model: int = 32, n_heads: int = 2,
                 expansion_ratio: int = 2, cell_emb_style: str = "cls", seed: int = 0) -> Path:
    """An untrained `ComposerTX` (tahoe-x1's own classes, its own initialisation, seeded) written in the
    Hub's layout: vocab.json, model_config.yml, collator_config.yml, model.safetensors."""
    import torch
    import yaml
    from omegaconf import OmegaConf as om
    from safetensors.torch import save_file
    from tahoe_x1.model import ComposerTX

    if d_model % n_heads:
        raise InputError(f"random Tahoe model: hidden_size {d_model} is not a multiple of n_heads {n_heads}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokens = list(SPECIAL_TOKENS) + [g for g in dict.fromkeys(genes) if g not in SPECIAL_TOKENS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    model_cfg, coll_cfg = tiny_configs(len(vocab), n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                                       expansion_ratio=expansion_ratio, cell_emb_style=cell_emb_style)
    build_cfg = om.create(model_cfg)
    build_cfg["attn_config"]["attn_impl"] = "torch"  # built without flash-attn; the saved config says flash (tahoe-x1 trains with it)
    torch.manual_seed(seed)
    model = ComposerTX(model_config=build_cfg, collator_config=om.create(coll_cfg))
    save_file({k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    (out / "vocab.json").write_text(json.dumps(vocab, indent=1) + "\n")
    (out / "model_config.yml").write_text(yaml.safe_dump(model_cfg, sort_keys=False))
    (out / "collator_config.yml").write_text(yaml.safe_dump(coll_cfg, sort_keys=False))
    return out


def build_random_from_settings(out, settings: dict, seed: int, genes_h5ad: str | None = None) -> Path:
    """Registry hook: a random Tahoe-x1 checkpoint sized by a model entry's `random:` settings, its
    vocabulary from the dataset / genes file (tissuelens.models.vocab); needs the tahoe-x1 package."""
    if not tahoe_available():
        raise InputError("models: source random for kind tahoe builds a ComposerTX and needs the tahoe-x1 package; "
                         "run download_model in the Tahoe stack (workflow/envs/tahoe_cpu.yaml, workflow/envs/tahoe.yaml or the container)")
    from tissuelens.models.vocab import random_vocabulary

    genes, _, _ = random_vocabulary(settings, seed, genes_h5ad)
    d_model, width = int(settings["hidden_size"]), int(settings["intermediate_size"])
    if width % d_model:
        raise InputError(f"random Tahoe model: intermediate_size {width} is not a multiple of hidden_size {d_model} "
                         "(TXBlock sizes its feed-forward layer as d_model x expansion_ratio)")
    return build_random(out, genes, n_layers=int(settings["n_layers"]), d_model=d_model, n_heads=int(settings["n_heads"]),
                        expansion_ratio=width // d_model, seed=seed)
