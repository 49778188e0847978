"""MedGemma (Gemma 3 image-text-to-text) behind one small interface, and the image letterbox.

`letterbox` resizes the tissue image to fit the model's square input and pads the rest (white, like
slide background), so the aspect ratio is kept; `side_by_side` puts several sections' images in one picture.
`Narrator` loads a local checkpoint through transformers' `pipeline("image-text-to-text")` and turns
(system, prompt, image) into text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tissuelens.errors import InputError, why
from tissuelens.io import read_json

DEFAULT_SIZE = 896  # MedGemma 1.5's preprocessor size


def as_pil(image):
    """PIL RGB image from an array (float in [0, 1] or uint8, grey or RGB(A)) or a PIL image."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        arr = np.asarray(image)
        if arr.dtype.kind == "f":
            arr = np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255)
        arr = arr.astype(np.uint8)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        image = Image.fromarray(arr[..., :3])
    return image.convert("RGB")


def letterbox(image, size: int, fill: int = 255):
    """PIL RGB image of `size`x`size`: `image` (array in [0,1] or uint8, or PIL) scaled to fit, centred, padded."""
    from PIL import Image

    image = as_pil(image)
    w, h = image.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    resized = image.resize(new, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (size, size), (fill, fill, fill))
    canvas.paste(resized, ((size - new[0]) // 2, (size - new[1]) // 2))
    return canvas


def side_by_side(images, height: int | None = None, fill: int = 255):
    """One PIL RGB image of several sections' images, left to right in the order given, each scaled to `height`
    pixels tall (default: the tallest's), with a gap of a twentieth of `height` (white, like slide background)
    between them."""
    from PIL import Image

    pictures = [as_pil(image) for image in images]
    height = height or max(p.height for p in pictures)
    pictures = [p.resize((max(1, round(p.width * height / p.height)), height), Image.Resampling.LANCZOS)
                for p in pictures]
    gap = height // 20
    canvas = Image.new("RGB", (sum(p.width for p in pictures) + gap * (len(pictures) - 1), height), (fill,) * 3)
    x = 0
    for picture in pictures:
        canvas.paste(picture, (x, 0))
        x += picture.width + gap
    return canvas


def checkpoint_info(checkpoint: str | Path) -> dict:
    """What provenance says about a checkpoint: architecture, name, whether the weights are untrained."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise InputError(f"{path}: narrative checkpoint directory not found")
    config_path = path / "config.json"
    config = read_json(config_path, missing="missing; not a transformers checkpoint")
    manifest = read_json(path / "tissuelens_model.json") if (path / "tissuelens_model.json").is_file() else {}
    return {
        "name": manifest.get("name", path.name),
        "checkpoint": str(path),
        "architecture": (config.get("architectures") or [config.get("model_type", "?")])[0],
        "model_type": config.get("model_type"),
        "revision": manifest.get("revision"),
        "untrained": bool(manifest.get("untrained", False)),
    }


def _dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


class Narrator:
    """A local image-text-to-text checkpoint; `input_size` is the square image size its processor expects."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", dtype: str = "auto"):
        from transformers import AutoProcessor, pipeline

        from tissuelens.device import resolve_device

        self.device = str(resolve_device(device))
        self.info = {**checkpoint_info(checkpoint), "device": self.device}
        try:
            self.processor = AutoProcessor.from_pretrained(str(checkpoint))
            self.pipe = pipeline("image-text-to-text", model=str(checkpoint), processor=self.processor,
                                 device=self.device, dtype=_dtype(dtype, self.device))
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{checkpoint}: cannot load as an image-text-to-text model ({why(exc)})") from None
        size = getattr(getattr(self.processor, "image_processor", None), "size", None) or {}
        self.input_size = int(size.get("height") or size.get("shortest_edge") or DEFAULT_SIZE)

    def __call__(self, system: str, prompt: str, image=None, max_new_tokens: int = 512) -> str:
        user = [{"type": "text", "text": prompt}]
        if image is not None:
            user.append({"type": "image", "image": image})
        messages = [{"role": "system", "content": [{"type": "text", "text": system}]},
                    {"role": "user", "content": user}]
        out = self.pipe(text=messages, max_new_tokens=int(max_new_tokens), generate_kwargs={"do_sample": False})
        return answer_text(out)


def answer_text(out) -> str:
    """The assistant's reply from a pipeline output `[{'generated_text': [..., {'role': 'assistant', ...}]}]`."""
    try:
        last = out[0]["generated_text"][-1]
    except (IndexError, KeyError, TypeError):
        raise InputError(f"narrative model returned an unexpected output: {str(out)[:200]}") from None
    content = last.get("content") if isinstance(last, dict) else last
    if isinstance(content, list):
        content = " ".join(c.get("text", "") for c in content if isinstance(c, dict))
    return str(content).strip()
