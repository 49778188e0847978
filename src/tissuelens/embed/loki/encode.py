"""Loki/OmiCLIP embeddings of spots: gene-sentence text embeddings, H&E patch image embeddings.

* Text: each spot's gene sentence (`gene_sentences`) through the CoCa text encoder
  (`model.encode_text`, L2-normalised), as `loki.utils.encode_text_df` does, batched. The CLIP BPE
  tokenizer lower-cases and splits symbols into several tokens and keeps the first `context_length - 2`
  of them, so only a sentence's first genes reach the model: `genes_in_context` counts, per spot, the
  genes whose tokens all fit.
* Image: a square patch of the H&E image centred on each spot, as Loki's `segment_patches` (20 x 20 px
  of the hires image by default, or `patch_um` microns), through the model's own eval transform (which
  resizes it to the model's input) and `model.encode_image`, L2-normalised, as `loki.utils.encode_image`
  does, batched. Loki skips spots whose patch reaches past the image; we pad them white and flag them.
* Agreement: per-spot cosine of its text and image embeddings; retrieval: does a spot's image embedding
  rank its own sentence first among its own and its `k` nearest spatial neighbours' sentences?
* Activations for the SAE stage: the text encoder's token outputs at chosen blocks (forward hooks on
  `model.text.transformer.resblocks[i]`; each BPE token is attributed to its gene, plus
  `<start_of_text>`, `<end_of_text>` and CoCa's appended `<cls>`), or the final embeddings.

Geometry: `obsm["spatial"]` holds full-resolution pixel (x, y) = (column, row); an image at
`uns["spatial"][lib]["images"][key]` is the full-resolution image scaled by
`scalefactors["tissue_<key>_scalef"]` (scanpy/squidpy convention); pixel (r, c) covers [c, c+1) x [r, r+1).

Also imported by the Loki conda env (Python 3.9): numpy, scipy, torch, PIL, tqdm only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from tissuelens.errors import InputError
from tissuelens.progress import Progress

log = logging.getLogger(__name__)
SOT, EOT, CLS = "<start_of_text>", "<end_of_text>", "<cls>"


# -- H&E patches ---------------------------------------------------------------------------------


@dataclass
class SpotImage:
    image: np.ndarray  # (H, W, 3) uint8
    scale: float  # image pixels per full-resolution pixel
    spot_diameter_fullres: float
    library: str
    key: str


def spot_image(adata, where: str, image_key: str = "hires", library_id: str | None = None) -> SpotImage:
    """The H&E image of a Visium-like AnnData with its scale factors; InputError if there is none."""
    libraries = adata.uns.get("spatial") if hasattr(adata, "uns") else None
    if not isinstance(libraries, dict) or not libraries:
        raise InputError(f"{where}: no H&E image (uns['spatial'] is missing); Loki image embeddings need one (set embed.loki.image: false for text only)")
    if library_id is None:
        if len(libraries) > 1:
            raise InputError(f"{where}: uns['spatial'] has several libraries ({', '.join(map(str, libraries))}); set embed.loki.library_id")
        library_id = next(iter(libraries))
    if library_id not in libraries:
        raise InputError(f"{where}: uns['spatial'] has no library '{library_id}' (has: {', '.join(map(str, libraries))})")
    lib = libraries[library_id]
    images = lib.get("images") or {}
    if image_key not in images:
        raise InputError(f"{where}: uns['spatial']['{library_id}']['images'] has no '{image_key}' image (has: {', '.join(images) or 'none'})")
    scalefactors = lib.get("scalefactors") or {}
    scale_key = f"tissue_{image_key}_scalef"
    for key in (scale_key, "spot_diameter_fullres"):
        value = scalefactors.get(key)
        if value is None or not np.isfinite(float(value)) or float(value) <= 0:
            raise InputError(f"{where}: uns['spatial']['{library_id}']['scalefactors']['{key}'] is missing or not positive")
    return SpotImage(
        as_rgb_uint8(np.asarray(images[image_key]), f"{where}: image '{image_key}'"),
        float(scalefactors[scale_key]),
        float(scalefactors["spot_diameter_fullres"]),
        str(library_id),
        image_key,
    )


def spot_images(adata, where: str, image_key: str = "hires", library_id: str | None = None) -> list:
    """(rows, SpotImage) pairs covering every spot: one image for all, or, for a dataset of several sections
    (tissuelens.sections) whose uns['spatial'] holds a library named after each section (squidpy's
    library_key convention), each section's spots with their own image. `library_id` set: that one image."""
    from tissuelens.sections import section_labels

    labels = section_labels(adata)
    libraries = adata.uns.get("spatial") if hasattr(adata, "uns") else None
    if (labels is not None and library_id is None and isinstance(libraries, dict) and len(libraries) > 1
            and set(map(str, labels.categories)) <= set(map(str, libraries))):
        codes = np.asarray(labels.codes)
        return [(np.flatnonzero(codes == i), spot_image(adata, where, image_key, str(name)))
                for i, name in enumerate(labels.categories) if (codes == i).any()]
    return [(np.arange(adata.n_obs), spot_image(adata, where, image_key, library_id))]


def as_rgb_uint8(img: np.ndarray, where: str) -> np.ndarray:
    """(H, W, 3) uint8 from grey, RGB or RGBA, uint8 or float in [0, 1] (scanpy stores either)."""
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4) or img.shape[0] == 0 or img.shape[1] == 0:
        raise InputError(f"{where}: shape {img.shape} is not an (H, W, 3|4) image")
    img = img[..., :3]
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    img = img.astype(np.float64)
    if not np.all(np.isfinite(img)):
        raise InputError(f"{where}: has NaN or infinite pixels")
    if img.max() > 1.0 + 1e-6:
        return np.clip(np.round(img), 0, 255).astype(np.uint8)
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


VISIUM_SPOT_UM = 55.0  # Visium spot diameter: converts patch_um to pixels through spot_diameter_fullres


def patch_side(image: SpotImage, patch_px=20, patch_um=None, spot_um: float = VISIUM_SPOT_UM) -> int:
    """Patch side in image pixels: `patch_px` (Loki's `segment_patches` crops 20 x 20 px of the hires
    image), or `patch_um` microns through the spot diameter (`spot_um` microns = spot_diameter_fullres
    full-resolution pixels). At least 1 px: the model's own transform resizes any patch."""
    if patch_um is not None:
        side = float(patch_um) / float(spot_um) * image.spot_diameter_fullres * image.scale
    else:
        side = float(patch_px)
    return max(int(round(side)), 1)


def patch_boxes(xy_fullres: np.ndarray, scale: float, side: int):
    """Top-left corners (x0, y0) in image pixels of each spot's `side` x `side` patch, and the centres.

    As Loki's `segment_patches`: x0 = round(x * scale - side / 2) with round-half-to-even (Python's
    `round`), the patch is [x0, x0 + side) x [y0, y0 + side).
    """
    centre = np.asarray(xy_fullres, dtype=np.float64) * scale
    corner = np.rint(centre - side / 2.0).astype(np.int64)
    return corner[:, 0], corner[:, 1], centre


def patch_padded(x0: np.ndarray, y0: np.ndarray, side: int, shape: tuple) -> np.ndarray:
    """True where a patch reaches past the image edge (Loki skips such spots; we pad them white)."""
    h, w = shape[:2]
    return (x0 < 0) | (y0 < 0) | (x0 + side > w) | (y0 + side > h)


def check_patches(centre: np.ndarray, shape: tuple, obs_names, where: str) -> None:
    """Spots must lie on the image."""
    h, w = shape[:2]
    bad = ~np.all(np.isfinite(centre), axis=1) | (centre[:, 0] < 0) | (centre[:, 0] >= w) | (centre[:, 1] < 0) | (centre[:, 1] >= h)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{where}: {int(bad.sum())} spots lie outside the {w}x{h} H&E image (e.g. '{obs_names[i]}' at "
            f"({centre[i, 0]:.1f}, {centre[i, 1]:.1f}) image px); check obsm['spatial'] and the scalefactors"
        )


def crop_patches(padded: np.ndarray, pad: int, x0: np.ndarray, y0: np.ndarray, side: int) -> np.ndarray:
    """(n, side, side, 3) crops from an image padded by `pad` white pixels on every side."""
    d = np.arange(side)
    rows = (y0 + pad)[:, None, None] + d[None, :, None]
    cols = (x0 + pad)[:, None, None] + d[None, None, :]
    return padded[rows, cols]


def pad_image(image: np.ndarray, pad: int) -> np.ndarray:
    return np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="constant", constant_values=255)


# -- text tokens -----------------------------------------------------------------------------


def gene_token_lengths(tokenizer, symbols) -> np.ndarray:
    """Number of BPE tokens of each symbol (one tokenizer call per gene, not per spot)."""
    out = np.zeros(len(symbols), dtype=np.int64)
    encode = getattr(tokenizer, "encode", None)
    for j, s in enumerate(symbols):
        if encode is not None:
            out[j] = len(encode(str(s)))
        else:  # tokenizers without .encode: count the non-pad tokens between start and end
            ids = tokenizer([str(s)])[0]
            out[j] = int((ids != 0).sum()) - 2
    return out


def text_positions(gene_idx: np.ndarray, token_len: np.ndarray, context_length: int):
    """Per spot: text tokens kept, genes fully in context, and the gene of every kept text token.

    open_clip's tokenizer writes <start_of_text>, the sentence's BPE tokens cut to `context_length - 2`,
    and <end_of_text>. Returns (n_text (n,), genes_in_context (n,), token_gene (flat gene indices of the
    kept text tokens, spot-major), token_offset (n + 1,) offsets into token_gene).
    """
    budget = context_length - 2
    lens = token_len[gene_idx]  # (n, k)
    cum = np.cumsum(lens, axis=1)
    total = cum[:, -1] if cum.shape[1] else np.zeros(len(gene_idx), dtype=np.int64)
    n_text = np.minimum(total, budget)
    in_context = (cum <= budget).sum(axis=1)
    flat_gene = np.repeat(gene_idx.ravel(), lens.ravel())
    spot_of = np.repeat(np.arange(len(gene_idx)), total)
    start = np.concatenate([[0], np.cumsum(total)[:-1]]) if len(total) else np.zeros(0, dtype=np.int64)
    within = np.arange(flat_gene.size) - start[spot_of]
    keep = within < n_text[spot_of]
    offsets = np.concatenate([[0], np.cumsum(n_text)])
    return n_text, in_context, flat_gene[keep], offsets


# -- encoders ---------------------------------------------------------------------------------


def _batches(n: int, size: int):
    for lo in range(0, n, size):
        yield lo, min(n, lo + size)


class TextTokenHooks:
    """Forward hooks on text-encoder blocks that keep each block's (batch, seq, width) output."""

    def __init__(self, model, layers: list[int]):
        blocks = model.text.transformer.resblocks
        self.batch_first = bool(getattr(model.text.transformer, "batch_first", False))
        self.outputs = {}
        self.handles = [blocks[i].register_forward_hook(self._hook(i)) for i in layers]

    def _hook(self, i):
        def hook(module, inputs, output):
            out = output[0] if isinstance(output, tuple) else output
            self.outputs[i] = out if self.batch_first else out.transpose(0, 1)

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def encode_texts(model, tokenizer, sentences, *, device, batch_size: int = 64, layers=None, on_tokens=None, progress=True) -> np.ndarray:
    """L2-normalised text embeddings (n, embed_dim) float32. With `layers`, `on_tokens(lo, hi, tokens,
    {layer: (b, seq, width) float tensor})` receives the block outputs of every batch."""
    import torch

    hooks = TextTokenHooks(model, list(layers)) if layers else None
    out = []
    bar = Progress(len(sentences), "Loki text", unit="spots", logger=log, enabled=progress)
    try:
        with torch.no_grad():
            for lo, hi in _batches(len(sentences), batch_size):
                tokens = tokenizer([str(s) for s in sentences[lo:hi]]).to(device)
                emb = model.encode_text(tokens, normalize=True)
                out.append(emb.float().cpu().numpy())
                if hooks is not None and on_tokens is not None:
                    on_tokens(lo, hi, tokens.cpu().numpy(), {i: t.float().cpu() for i, t in hooks.outputs.items()})
                bar.update(hi - lo)
    finally:
        if hooks is not None:
            hooks.remove()
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def encode_images(model, preprocess, image: np.ndarray, x0, y0, side: int, *, device, batch_size: int = 64, progress=True) -> np.ndarray:
    """L2-normalised image embeddings (n, embed_dim) of the spots' patches, cropped batch by batch."""
    import torch
    from PIL import Image

    padded = pad_image(image, side)
    out = []
    bar = Progress(len(x0), "Loki image", unit="spots", logger=log, enabled=progress)
    with torch.no_grad():
        for lo, hi in _batches(len(x0), batch_size):
            crops = crop_patches(padded, side, x0[lo:hi], y0[lo:hi], side)
            batch = torch.stack([preprocess(Image.fromarray(c)) for c in crops]).to(device)
            out.append(model.encode_image(batch, normalize=True).float().cpu().numpy())
            bar.update(hi - lo)
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


# -- agreement --------------------------------------------------------------------------------


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def cosine_agreement(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """Per-spot cosine similarity of its text and image embeddings."""
    return np.sum(l2_normalise(text) * l2_normalise(image), axis=1)


def section_codes(adata):
    """Each spot's section code (tissuelens.sections), or None for a dataset of one section."""
    from tissuelens.sections import section_labels

    labels = section_labels(adata)
    return None if labels is None else np.asarray(labels.codes)


def spatial_neighbours(xy: np.ndarray, k: int, sections=None) -> np.ndarray:
    """(n, k) indices of each spot's k nearest other spots (ties by index); with `sections` (codes) only spots of
    the same section (k at most the smallest section's size - 1)."""
    from scipy.spatial import cKDTree

    n = len(xy)
    k = min(k, n - 1)
    points = np.asarray(xy, dtype=np.float64)
    if sections is not None:
        sizes = np.bincount(sections)
        k = min(k, int(sizes[sizes > 0].min()) - 1)
        far = 10.0 * (float(np.ptp(points, axis=0).max()) + 1.0)  # sections this far apart: never neighbours
        points = np.column_stack([points, np.asarray(sections, dtype=np.float64) * far])
    if k < 1:
        return np.zeros((n, 0), dtype=np.int64)
    _, idx = cKDTree(points).query(points, k=k + 1)
    idx = np.asarray(idx).reshape(n, k + 1)
    out = np.empty((n, k), dtype=np.int64)
    # drop each spot itself (usually column 0; with duplicate locations it may sit elsewhere)
    self_mask = idx == np.arange(n)[:, None]
    # rows where the spot itself is not among the k+1 (exact duplicate locations): drop the last column
    missing = ~self_mask.any(axis=1)
    self_mask[missing, -1] = True
    out[:] = idx[~self_mask].reshape(n, k)
    return out


def retrieval_hits(text: np.ndarray, image: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """True where a spot's image embedding is more similar to its own sentence than to every neighbour's."""
    t, im = l2_normalise(text), l2_normalise(image)
    own = np.sum(t * im, axis=1)
    if neighbours.shape[1] == 0:
        return np.ones(len(t), dtype=bool)
    others = np.einsum("nd,nkd->nk", im, t[neighbours])
    return own > others.max(axis=1)


def summary(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"mean": None, "median": None, "min": None, "max": None}
    return {"mean": float(values.mean()), "median": float(np.median(values)), "min": float(values.min()), "max": float(values.max())}


# -- the whole step ------------------------------------------------------------------------------


DEFAULTS = {
    "n_top_genes": 50,
    "housekeeping": None,
    "layer": None,
    "image": "auto",
    "image_key": "hires",
    "library_id": None,
    "patch_px": 20,
    "patch_um": None,
    "spot_um": VISIUM_SPOT_UM,
    "batch_size": 32,
    "retrieval_neighbours": 6,
    "activations": "tokens",
    "layers": [-1],
    "gene_id_key": "gene_ids",
    "device": "auto",
    "progress": True,
}


def resolve_layers(layers, n_layers: int, where: str) -> list:
    out = []
    for k in layers:
        k = int(k)
        j = k + n_layers if k < 0 else k
        if not 0 <= j < n_layers:
            raise InputError(f"{where}: layer {k} out of range; the text encoder has {n_layers} blocks")
        out.append(j)
    return sorted(set(out))


def embed_spots(adata, ckpt, settings: dict, *, model_name: str, where: str, activations_dir=None):
    """Loki text (and image) embeddings of every spot of a preprocessed AnnData; returns (embeddings
    AnnData, metrics dict). Writes the activation files into `activations_dir` when given."""
    import pandas as pd

    from tissuelens.device import resolve_device
    from tissuelens.embed import gene_sentences as gs
    from tissuelens.embed.activations import ActivationWriter

    s = dict(DEFAULTS)
    s.update({k: v for k, v in (settings or {}).items() if k in DEFAULTS})
    n = adata.n_obs
    if n == 0:
        raise InputError(f"{where}: no spots")
    symbols = np.asarray(adata.var_names.astype(str), dtype=object)
    gs.check_symbols(symbols, where)
    if s["layer"]:
        if s["layer"] not in adata.layers:
            raise InputError(f"{where}: layer '{s['layer']}' not in layers (has: {', '.join(adata.layers) or 'none'})")
        x = adata.layers[s["layer"]]
    else:
        x = adata.X
    try:
        sentences, gene_idx, n_expr = gs.gene_sentences(x, symbols, gs.load_housekeeping(s["housekeeping"]), int(s["n_top_genes"]))
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None

    # everything that can fail on the input is checked before the model runs
    images = None  # [(rows, SpotImage, side)]: one image, or one per section (each section's own)
    if s["image"] is True or s["image"] == "auto":
        try:
            images = spot_images(adata, where, s["image_key"], s["library_id"])
        except InputError:
            if s["image"] is True:
                raise
            log.info("%s: no H&E image; text embeddings only", where)
    image = None if images is None else images[0][1]
    if images is not None:
        if "spatial" not in adata.obsm:
            raise InputError(f"{where}: obsm['spatial'] is missing; image patches need spot coordinates")
        xy = np.asarray(adata.obsm["spatial"])[:, :2]
        x0, y0, padded = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
        sized = []
        for rows, one in images:
            side = patch_side(one, s["patch_px"], s["patch_um"], s["spot_um"])
            bx0, by0, centre = patch_boxes(xy[rows], one.scale, side)
            check_patches(centre, one.image.shape, adata.obs_names[rows], where)
            x0[rows], y0[rows] = bx0, by0
            padded[rows] = patch_padded(bx0, by0, side, one.image.shape)
            sized.append((rows, one, side))
        images = sized
        if padded.any():
            log.info("%s: %d spots' patches reach past the image edge; padded white and flagged (obs loki_patch_padded)",
                     where, int(padded.sum()))
    layers = resolve_layers(s["layers"], ckpt.n_layers, f"{where}: embed.loki.layers") if s["activations"] == "tokens" else []

    import torch

    device = resolve_device(s["device"])
    model, preprocess, tokenizer = ckpt.load_model(device)
    ctx = ckpt.context_length
    used = np.unique(gene_idx)
    token_len = np.zeros(len(symbols), dtype=np.int64)
    token_len[used] = gene_token_lengths(tokenizer, symbols[used])
    n_text, in_context, token_gene, offsets = text_positions(gene_idx, token_len, ctx)

    gene_ids = adata.var[s["gene_id_key"]].astype(str).to_numpy() if s["gene_id_key"] in adata.var else symbols.astype(str)
    meta = {"model": model_name, "kind": "loki", "untrained": ckpt.untrained,
            "checkpoint": {k: v for k, v in ckpt.describe().items() if k != "path"}}
    writer = None
    per_spot = n_text + 3  # <start_of_text>, text tokens, <end_of_text>, appended <cls>
    row_start = np.concatenate([[0], np.cumsum(per_spot)])
    if activations_dir is not None and layers:
        index = token_index(n_text, token_gene, gene_ids, np.asarray(adata.obs_names), ctx)
        meta.update(activations="tokens", source="text encoder blocks (model.text.transformer.resblocks[k])")
        writer = ActivationWriter(activations_dir, layers, ckpt.d_model, index, meta)

    def on_tokens(lo, hi, tokens, outputs):
        b, width = tokens.shape
        nt = n_text[lo:hi]
        pos = np.arange(width + 1)[None, :]
        keep = (pos < (nt + 2)[:, None]) | (pos == width)  # the <cls> CoCa appends sits at index width
        # <end_of_text> (the largest id) right after the text tokens, padding after it
        eot_ok = tokens[np.arange(b), nt + 1] == tokens.max(axis=1)
        pad_ok = (tokens * (pos[:, :width] > (nt + 1)[:, None])).sum(axis=1) == 0
        if not (eot_ok.all() and pad_ok.all()):
            raise RuntimeError("Loki tokenizer output does not match the per-gene token counts")
        for k in layers:
            block = outputs[k].numpy()[keep]
            if not np.all(np.isfinite(block)):
                raise InputError(f"{ckpt.weights}: the model gives non-finite activations at text block {k}")
            writer.write(k, slice(int(row_start[lo]), int(row_start[hi])), block)

    torch.manual_seed(0)
    text = encode_texts(model, tokenizer, list(sentences), device=device, batch_size=int(s["batch_size"]),
                        layers=layers if writer else None, on_tokens=on_tokens if writer else None, progress=bool(s["progress"]))
    img = None
    for rows, one, side in images or []:
        part = encode_images(model, preprocess, one.image, x0[rows], y0[rows], side, device=device,
                             batch_size=int(s["batch_size"]), progress=bool(s["progress"]))
        if img is None:
            img = np.zeros((n, part.shape[1]), dtype=part.dtype)
        img[rows] = part

    metrics = {
        "model": model_name,
        "kind": "loki",
        "untrained": ckpt.untrained,
        "checkpoint": {k: v for k, v in ckpt.describe().items() if k != "path"},
        "n_spots": int(n),
        "n_top_genes": int(s["n_top_genes"]),
        "genes_per_sentence": int(gene_idx.shape[1]),
        "expressed_genes_in_sentence": summary(n_expr),
        "genes_in_context": {**summary(in_context), "context_length": ctx, "text_token_budget": ctx - 2},
        "sentences_truncated_fraction": float(np.mean(in_context < gene_idx.shape[1])),
        "image": None,
    }
    out = _embedding_anndata(adata, text, img, sentences, in_context, n_expr, model_name)
    if img is not None:
        cos = cosine_agreement(text, img)
        neighbours = spatial_neighbours(np.asarray(adata.obsm["spatial"])[:, :2], int(s["retrieval_neighbours"]),
                                        section_codes(adata))
        hits = retrieval_hits(text, img, neighbours)
        out.obs["loki_text_image_cosine"] = cos.astype(np.float32)
        out.obs["loki_retrieval_hit"] = hits
        out.obs["loki_patch_padded"] = padded
        spot_px = [round(float(one.spot_diameter_fullres * one.scale), 2) for _, one, _ in images]
        one_image = len(images) == 1  # several: one value per section's image, in section order
        metrics["image"] = {"library": image.library if one_image else [one.library for _, one, _ in images],
                            "image_key": image.key,
                            "patch_px": images[0][2] if one_image else [side for _, _, side in images],
                            "patch_um": s["patch_um"], "spot_px": spot_px[0] if one_image else spot_px,
                            "padded_spots": int(padded.sum()), "model_input_px": ckpt.image_size}
        metrics["text_image_cosine"] = summary(cos)
        metrics["retrieval"] = {"accuracy": float(hits.mean()), "neighbours": int(neighbours.shape[1]),
                                "chance": 1.0 / (neighbours.shape[1] + 1)}

    if activations_dir is not None and writer is None:
        # final embeddings as the activations: one row per spot and modality (non-special names, so
        # the SAE stage trains on them)
        blocks = [text] + ([img] if img is not None else [])
        cell = np.repeat(np.arange(n), len(blocks))
        names = np.array(["loki_text", "loki_image"][: len(blocks)], dtype=object)
        index = pd.DataFrame({"cell": cell, "obs_name": np.asarray(adata.obs_names)[cell], "gene": np.tile(names, n),
                              "position": np.tile(np.arange(len(blocks)), n)})
        meta.update(activations="embeddings", source="final L2-normalised text (and image) embeddings")
        writer = ActivationWriter(activations_dir, [0], ckpt.embed_dim, index, meta)
        writer.write(0, slice(None), np.stack(blocks, axis=1).reshape(-1, ckpt.embed_dim))
    if writer is not None:
        writer.close()
    return out, metrics


def token_index(n_text: np.ndarray, token_gene: np.ndarray, gene_ids: np.ndarray, obs_names: np.ndarray, ctx: int):
    """One row per exported text token: per spot <start_of_text>, the gene of each kept BPE token,
    <end_of_text>, then CoCa's appended <cls> (position `ctx`)."""
    import pandas as pd

    per_spot = n_text + 3
    cell = np.repeat(np.arange(len(n_text)), per_spot)
    start = np.concatenate([[0], np.cumsum(per_spot)[:-1]])
    within = np.arange(cell.size) - start[cell]
    nt = n_text[cell]
    genes = np.empty(cell.size, dtype=object)
    genes[(within >= 1) & (within <= nt)] = np.asarray(gene_ids, dtype=object)[token_gene]
    genes[within == 0] = SOT
    genes[within == nt + 1] = EOT
    genes[within == nt + 2] = CLS
    position = np.where(within == nt + 2, ctx, within)
    return pd.DataFrame({"cell": cell, "obs_name": obs_names[cell], "gene": genes, "position": position})


def _embedding_anndata(adata, text, img, sentences, in_context, n_expr, model_name):
    import anndata as ad

    out = ad.AnnData(obs=adata.obs.copy())
    out.obsm["X_loki_text"] = text.astype(np.float32)
    if img is not None:
        out.obsm["X_loki_image"] = img.astype(np.float32)
    out.obsm[f"X_{model_name}"] = text.astype(np.float32)
    if "spatial" in adata.obsm:
        out.obsm["spatial"] = np.asarray(adata.obsm["spatial"])
    out.obs["loki_sentence"] = np.asarray(sentences, dtype=object).astype(str)
    out.obs["loki_genes_in_context"] = in_context.astype(np.int32)
    out.obs["loki_expressed_genes"] = n_expr.astype(np.int32)
    return out
