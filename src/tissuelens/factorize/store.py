"""The trained-model directory: model.pt (state_dict + what is needed to rebuild it), training.json,
Z.npy / groupsZ.npy (inducing points in model units). Loaded with weights_only=True."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tissuelens.errors import InputError
from tissuelens.factorize.data import FactorData, GROUP_VARIANTS
from tissuelens.factorize.model import FactorModel, build_model
from tissuelens.io import atomic_path, read_json

MODEL_VERSION = 2  # 2: svgp q(u) in u-space


def inducing_of(model: FactorModel) -> torch.Tensor:
    """Inducing inputs (M, 2) or (M, 3) with the group column; empty for pnmf."""
    z = getattr(model.prior, "inducing", None)
    return torch.zeros(0, 2) if z is None else z.detach().cpu()


def save_model(out_dir: Path, model: FactorModel, variant: str, data: FactorData, settings: dict,
               training: dict) -> None:
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        z = inducing_of(model)
        torch.save({
            "version": MODEL_VERSION,
            "variant": variant,
            "model": {k: v.cpu() for k, v in model.state_dict().items()},
            "inducing": z,
            "train_idx": torch.as_tensor(data.train_idx),
            "genes": data.gene_names.tolist(),
            "n_cells": data.n_cells,
        }, tmp / "model.pt")
        (tmp / "training.json").write_text(json.dumps({**training, "variant": variant, "settings": settings}, indent=2) + "\n")
        np.save(tmp / "Z.npy", z[:, :2].numpy())
        if variant in GROUP_VARIANTS:
            np.save(tmp / "groupsZ.npy", z[:, 2].round().long().numpy())


def load_model(model_dir: Path, data: FactorData, settings: dict, variant: str) -> tuple[FactorModel, dict]:
    path = Path(model_dir) / "model.pt"
    if not path.exists():
        raise InputError(f"{path}: no trained model (run the factorize rule first)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: cannot read the model ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("version") != MODEL_VERSION or state.get("variant") != variant:
        raise InputError(f"{path}: not a '{variant}' model of this tissuelens version")
    if state["n_cells"] != data.n_cells or state["genes"] != data.gene_names.tolist() \
            or not np.array_equal(state["train_idx"].numpy(), data.train_idx):
        raise InputError(f"{path}: trained on other cells, genes or split than the input AnnData; rerun factorize")
    model = build_model(variant, data, settings, inducing=state["inducing"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise InputError(f"{path}: does not match the settings ({str(exc).splitlines()[0]})") from None
    training = read_json(Path(model_dir) / "training.json")
    return model, training
