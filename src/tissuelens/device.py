"""Device choice shared by every torch step (`auto` means CUDA when the job has a GPU), and its CPU threads."""

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


def set_threads(n: int | None) -> None:
    """Hold torch's CPU work to the rule's `threads:` (torch would take every core of a shared node); 0 or None
    leaves torch's default."""
    if n:
        import torch

        torch.set_num_threads(n)
