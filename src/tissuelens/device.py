"""Device choice shared by every torch step: `auto` means CUDA when the job has a GPU."""

from __future__ import annotations

from tissuelens.errors import InputError


def resolve_device(name: str = "auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device '{name}' requested but no CUDA device is visible")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"device '{name}' is not one of auto, cpu, cuda, cuda:N")
    return torch.device(name)
