"""What the Loki scripts call: the embed step (`embed_spots`, `quality_metrics`) and the task rules
(`run_annotate`, `run_retrieve`, `run_predex`, `run_decompose`) on a Loki embed rule's embeddings.h5ad.

Each checks its inputs, computes, and returns what its script writes (tables and a summary), so that a
bad input fails before any output exists. Imported by the Loki stack (Python 3.9): heavy imports inside
functions.
"""

from __future__ import annotations

import logging

import numpy as np

from tissuelens.embed.loki import tasks as lt
from tissuelens.embed.loki.agreement import cosine_agreement, retrieval_hits, section_codes, spatial_neighbours
from tissuelens.embed.loki.agreement import summary as summary_of
from tissuelens.embed.loki.decompose import (abundance_weights, cell_counts, decomposition_table, history_number,
                                             seeded_tangram_map)
from tissuelens.embed.loki.encode import (context_report, encode_images, encode_texts, gene_token_lengths, resolve_layers,
                                          text_positions, token_index)
from tissuelens.embed.loki.inputs import (IMAGE, TEXT, coordinates, expression, feature_anndata, image_embeddings, labels_of,
                                          marker_net, read_bulk, read_sentences)
from tissuelens.embed.loki.patches import VISIUM_SPOT_UM, check_patches, patch_boxes, patch_padded, patch_side, spot_images
from tissuelens.errors import InputError

log = logging.getLogger(__name__)


# -- the embed step ------------------------------------------------------------------------------


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


def embed_spots(adata, ckpt, settings: dict, *, model_name: str, where: str, activations_dir=None):
    """Loki text (and image) embeddings of every spot of a preprocessed AnnData; returns (embeddings
    AnnData, metrics dict). Writes the activation files into `activations_dir` when given."""
    import pandas as pd

    from tissuelens.device import resolve_device
    from tissuelens.embed.activations import ActivationWriter
    from tissuelens.embed.loki import sentences as gs

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
        "expressed_genes_in_sentence": summary_of(n_expr),
        "genes_in_context": {**summary_of(in_context), "context_length": ctx, "text_token_budget": ctx - 2},
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
        metrics["text_image_cosine"] = summary_of(cos)
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


def quality_metrics(out, seed: int, label_key: str = "group") -> dict:
    """The embed stage's shared quality metrics (tissuelens.embed.metrics) for the text and the image
    embeddings: label agreement (obs[label_key]) and spatial coherence. Skipped, with the reason, where
    their packages (scikit-learn, scanpy) are missing, as in the Python 3.9 Loki env."""
    try:
        from tissuelens.embed.metrics import label_metrics, spatial_metrics

        res = {}
        for key in ("X_loki_text", "X_loki_image"):
            if key not in out.obsm:
                continue
            x = np.asarray(out.obsm[key])
            res[key] = {}
            if label_key in out.obs:
                res[key]["labels"] = label_metrics(x, out.obs[label_key].to_numpy(), seed=seed)
            if "spatial" in out.obsm:
                res[key]["spatial"] = spatial_metrics(x, np.asarray(out.obsm["spatial"])[:, :2], seed=seed)
        return {"quality": res}
    except ImportError as exc:
        return {"quality": {"skipped": f"shared embedding metrics need {exc.name}"}}


# -- the task rules ------------------------------------------------------------------------------


def run_annotate(emb, var_names, ckpt, settings: dict, where: str):
    """(per-spot table, summary): best type from the image (and the text) embeddings."""
    import pandas as pd
    import torch

    from tissuelens.device import resolve_device

    if settings.get("sentences"):
        sentences = read_sentences(settings["sentences"], where)
        source = {"sentences_file": str(settings["sentences"])}
    elif settings.get("markers"):
        net = marker_net(settings["markers"], settings["format"], settings.get("species"), var_names,
                         settings.get("min_markers", 1), where)
        sentences = lt.marker_sentences(net, int(settings["top_n"]))
        source = {"markers": str(settings["markers"]), "top_n": int(settings["top_n"])}
    else:  # bulk only
        sentences, source = {}, {}
    bulk = read_bulk(settings["bulk"], where) if settings.get("bulk") else None
    if bulk is not None and IMAGE not in emb.obsm:
        raise InputError(f"{where}: embed.loki.annotate.bulk scores the spots' image embeddings (obsm['{IMAGE}']), "
                         "and there are none")
    types = list(sentences)
    device = resolve_device(settings.get("device", "auto"))
    model, _, tokenizer = ckpt.load_model(device)
    context = context_report(sentences, tokenizer, int(ckpt.context_length))
    for t, c in context.items():
        if c["cut"]:
            log.warning("%s: the sentence of '%s' has %d genes; only the first %d fit the text context (%d tokens)",
                        where, t, len(c["genes"]), c["genes_in_context"], ckpt.context_length)
    with torch.no_grad():
        scale = float(model.logit_scale.exp().item()) if hasattr(model, "logit_scale") else 1.0
    x, y = coordinates(emb)
    table = pd.DataFrame({"obs_name": np.asarray(emb.obs_names).astype(str), "x": x, "y": y})
    summary = {"cell_types": types, "sentences": sentences, "logit_scale": scale, **source,
               "context": context, "untrained": bool(ckpt.untrained)}
    if bulk is not None:
        from tissuelens.embed.loki import sentences as gs

        samples, symbols, bx = bulk
        bulk_sentences, _, _ = gs.gene_sentences(bx, symbols, gs.load_housekeeping(None))
        bulk_emb = encode_texts(model, tokenizer, [str(b) for b in bulk_sentences], device=device, progress=False)
        scores = lt.bulk_scores(np.asarray(emb.obsm[IMAGE]), bulk_emb)
        bulk_context = context_report(dict(zip(samples, map(str, bulk_sentences))), tokenizer, int(ckpt.context_length))
        for j, name in enumerate(samples):
            table[f"bulk:{name}"] = scores[:, j]
        summary["bulk"] = {name: {"sentence": str(bulk_sentences[j]), "genes_in_context": bulk_context[name]["genes_in_context"],
                                  "score": summary_of(scores[:, j])} for j, name in enumerate(samples)}
        summary["bulk_file"] = str(settings["bulk"])
    if not types:
        return table, summary
    type_emb = encode_texts(model, tokenizer, [sentences[t] for t in types], device=device, progress=False)
    labels = labels_of(emb)
    for src, key in (("image", IMAGE), ("text", TEXT)):
        if key not in emb.obsm:
            continue
        best, best_sim, entropy, sim = lt.annotate(np.asarray(emb.obsm[key]), type_emb, scale)
        table[f"{src}_cell_type"] = pd.Categorical(np.asarray(types, dtype=object)[best], categories=types)
        table[f"{src}_similarity"] = best_sim
        table[f"{src}_entropy"] = entropy
        for j, t in enumerate(types):
            table[f"{src}_cos:{t}"] = sim[:, j]
        counts = table[f"{src}_cell_type"].value_counts(sort=False)
        summary[src] = {"counts": {str(k): int(v) for k, v in counts.items()}, "similarity": summary_of(best_sim),
                        "entropy": summary_of(entropy)}
        if labels is not None:
            summary[src]["by_group"] = pd.crosstab(labels, table[f"{src}_cell_type"].to_numpy()).to_dict(orient="index")
    return table, summary


def run_retrieve(emb, settings: dict, where: str, reference=None, reference_name: str | None = None):
    """(long table: one row per spot and rank, summary) or (None, skipped summary)."""
    import pandas as pd

    img = image_embeddings(emb, settings.get("enabled", "auto"), where, "retrieve")
    if img is None:
        return None, {"skipped": "no H&E image embeddings"}
    ref = emb if reference is None else reference
    if TEXT not in ref.obsm:
        raise InputError(f"{where}: the reference has no text embeddings (obsm['{TEXT}'])")
    k = lt.check_k(settings["k"], ref.n_obs, f"{where}: embed.loki.retrieve.k")
    idx, sims = lt.top_matches(lt.similarity(img, np.asarray(ref.obsm[TEXT])), k)
    q_labels, r_labels = labels_of(emb), labels_of(ref)
    if reference is not None and r_labels is None:
        raise InputError(f"{where}: reference dataset '{reference_name}' has no labels (obs['group']); retrieval "
                         "against a reference is scored by its labels")
    self_index = np.arange(emb.n_obs) if reference is None else None
    metrics = lt.retrieval_metrics(idx, self_index, q_labels, r_labels)
    n = emb.n_obs
    ref_names = np.asarray(ref.obs_names).astype(str)
    table = pd.DataFrame({
        "spot": np.repeat(np.asarray(emb.obs_names).astype(str), k),
        "rank": np.tile(np.arange(1, k + 1), n),
        "match": ref_names[idx.ravel()],
        "similarity": sims.ravel(),
    })
    if self_index is not None:
        table["same_spot"] = (idx == self_index[:, None]).ravel()
    if q_labels is not None and r_labels is not None:
        table["label"] = np.repeat(q_labels, k)
        table["match_label"] = r_labels[idx.ravel()]
    metrics.update(reference=reference_name or "self", n_reference=int(ref.n_obs),
                   self_chance=float(k / ref.n_obs) if self_index is not None else None)
    return table, metrics


def _score(img_test, text_train, x_train, x_test, settings: dict, where: str):
    """(prediction, per-gene Pearson) of the test spots from the training spots."""
    top = settings.get("top_k")
    if top is not None:
        lt.check_k(top, len(x_train), f"{where}: embed.loki.predex.top_k (reference = training spots)")
    pred = lt.predict_expression(lt.similarity(img_test, text_train), x_train, top, settings.get("temperature"))
    return pred, lt.pearson_per_gene(pred, x_test)


def _pearson_summary(r: np.ndarray) -> dict:
    finite = r[np.isfinite(r)]
    return {"pearson_mean": float(finite.mean()) if finite.size else None,
            "pearson_median": float(np.median(finite)) if finite.size else None, "genes_scored": int(finite.size)}


def within_split(emb, settings: dict, seed: int, where: str) -> np.ndarray:
    """Held-out spots of one slide: whole spatial blocks (`split: blocks`, default) or a random subset
    (`split: random`; neighbours of test spots train, so scores are optimistic)."""
    split = settings.get("split", "blocks")
    if split == "random":
        return lt.holdout_split(emb.n_obs, settings["test_fraction"], seed)
    if split != "blocks":
        raise InputError(f"{where}: embed.loki.predex.split: '{split}' is not one of blocks, random")
    if "spatial" not in emb.obsm:
        raise InputError(f"{where}: embed.loki.predex.split: blocks needs spot coordinates (obsm['spatial']); set split: random")
    key = settings.get("section_key")
    if key is not None and key not in emb.obs:
        raise InputError(f"{where}: embed.loki.predex.section_key: obs has no column '{key}'")
    try:
        return lt.block_split(np.asarray(emb.obsm["spatial"])[:, :2], settings["test_fraction"], int(settings.get("blocks", 4)),
                              seed, None if key is None else emb.obs[key].to_numpy())
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


def run_predex(emb, adata, settings: dict, seed: int, where: str, references=None):
    """(gene table, per-spot long table of the best genes, summary) or (None, None, skipped summary).

    Without `references`: held-out spots of this slide (blocks or random) predicted from its other spots.
    With `references` [(name, embeddings, preprocessed), ...] (Loki's evaluation): every spot of this slide
    predicted from the reference slides' spots, scored per gene; the within-slide score beside it."""
    import pandas as pd

    img = image_embeddings(emb, settings.get("enabled", "auto"), where, "predex")
    if img is None:
        return None, None, {"skipped": "no H&E image embeddings"}
    if list(emb.obs_names) != list(adata.obs_names):
        raise InputError(f"{where}: embeddings.h5ad and preprocessed.h5ad list different spots")
    if TEXT not in emb.obsm:
        raise InputError(f"{where}: no text embeddings (obsm['{TEXT}'])")
    x, genes = expression(adata, settings["genes"])
    text = np.asarray(emb.obsm[TEXT])
    test = within_split(emb, settings, seed, where)
    pred_w, r_w = _score(img[test], text[~test], x[~test], x[test], settings, where)
    within = {"split": settings.get("split", "blocks"), "n_train": int((~test).sum()), "n_test": int(test.sum()),
              **_pearson_summary(r_w)}
    summary = {"genes": settings["genes"], "top_k": settings.get("top_k"), "temperature": settings.get("temperature")}
    if references:
        names, texts, xs = [], [], []
        shared = list(genes)
        for name, r_emb, r_pre in references:
            if TEXT not in r_emb.obsm:
                raise InputError(f"{where}: reference dataset '{name}' has no text embeddings (obsm['{TEXT}'])")
            if list(r_emb.obs_names) != list(r_pre.obs_names):
                raise InputError(f"{where}: reference dataset '{name}': embeddings.h5ad and preprocessed.h5ad list different spots")
            have = set(np.asarray(r_pre.var_names).astype(str))
            shared = [g for g in shared if g in have]
        if not shared:
            raise InputError(f"{where}: no gene of this dataset's PredEx genes is in the reference datasets "
                             f"({', '.join(n for n, _, _ in references)})")
        for name, r_emb, r_pre in references:
            rx, rgenes = expression(r_pre, "all")
            col = {g: j for j, g in enumerate(rgenes)}
            xs.append(rx[:, [col[g] for g in shared]])
            texts.append(np.asarray(r_emb.obsm[TEXT]))
            names.append(name)
        in_shared = set(shared)
        keep = [j for j, g in enumerate(genes) if g in in_shared]
        x, genes = x[:, keep], np.asarray(shared)
        r_w = r_w[keep]
        test = np.ones(emb.n_obs, dtype=bool)
        pred, r = _score(img, np.vstack(texts), np.vstack(xs), x, settings, where)
        summary.update(evaluation="cross_slide", reference=names, n_train=int(sum(len(t) for t in texts)), n_test=int(emb.n_obs),
                       n_genes=int(len(genes)), **_pearson_summary(r), within_slide=within)
    else:
        pred, r = pred_w, r_w
        summary.update(evaluation=f"within_slide_{within['split']}", n_train=within["n_train"], n_test=within["n_test"],
                       n_genes=int(len(genes)), **_pearson_summary(r))
    cols = {"gene": genes, "pearson": r}
    if references:
        cols["pearson_within_slide"] = r_w
    cols.update(mean_measured=x[test].mean(axis=0), mean_predicted=pred.mean(axis=0))
    table = pd.DataFrame(cols).sort_values("pearson", ascending=False, na_position="last")
    best = [g for g in table["gene"].head(int(settings["report_genes"]))]
    col = {g: j for j, g in enumerate(genes)}
    xs_, ys_ = coordinates(emb)
    names_ = np.asarray(emb.obs_names).astype(str)[test]
    spots = pd.concat([pd.DataFrame({"obs_name": names_, "x": xs_[test], "y": ys_[test], "gene": g,
                                     "measured": x[test][:, col[g]], "predicted": pred[:, col[g]]}) for g in best],
                      ignore_index=True) if best else pd.DataFrame(columns=["obs_name", "x", "y", "gene", "measured", "predicted"])
    summary["best_genes"] = best
    return table, spots, summary


def run_decompose(emb, reference, settings: dict, seed: int, where: str, reference_name: str):
    """(per-spot table, summary): Tangram in clusters mode maps the reference's cells (their OmiCLIP text
    embeddings, grouped by label) onto the spots' OmiCLIP image (or text) embeddings, with Loki's
    cell_type_decompose arguments; proportions weighted by each type's abundance (see `proportions`)."""
    import pandas as pd
    import tangram as tg

    labels = labels_of(reference, settings["label_key"])
    if labels is None:
        raise InputError(f"{where}: reference dataset '{reference_name}' has no labels (obs['{settings['label_key']}'])")
    if TEXT not in reference.obsm:
        raise InputError(f"{where}: reference dataset '{reference_name}' has no text embeddings (obsm['{TEXT}'])")
    source = settings["spot_embedding"]
    if source == "auto":
        source = "image" if IMAGE in emb.obsm else "text"
    key = IMAGE if source == "image" else TEXT
    if key not in emb.obsm:
        raise InputError(f"{where}: no {source} embeddings (obsm['{key}']); set embed.loki.decompose.spot_embedding: text")
    types = sorted({str(v) for v in labels})
    weights = abundance_weights(types, labels, settings, where)
    if settings.get("nms_mode"):
        bad = [t for t in settings.get("major_types") or [] if t not in types]
        if bad:
            raise InputError(f"{where}: embed.loki.decompose.major_types: no reference cells of type {', '.join(bad)} "
                             f"(the reference's types: {', '.join(types)})")
        if not settings.get("min_percentile", 5) < settings.get("max_percentile", 95):
            raise InputError(f"{where}: embed.loki.decompose: min_percentile must be below max_percentile")
    cell_counts(emb, settings, where)  # checked before Tangram runs
    sc_ad = feature_anndata(reference.obsm[TEXT], reference.obs_names, {"cell_type": labels})
    st_ad = feature_anndata(emb.obsm[key], emb.obs_names)
    tg.pp_adatas(sc_ad, st_ad, genes=None)
    # pp_adatas lists the shared dimensions in set order, which changes with Python's string hashing from
    # one process to the next (and with it the float sums); in dimension order every run gives the same map
    order = {g: i for i, g in enumerate(sc_ad.var_names)}
    for a in (sc_ad, st_ad):
        a.uns["training_genes"] = sorted(a.uns["training_genes"], key=order.__getitem__)
        a.uns["overlap_genes"] = sorted(a.uns["overlap_genes"], key=order.__getitem__)
    ad_map = seeded_tangram_map(sc_ad, st_ad, settings, seed)
    tg.project_cell_annotations(ad_map, st_ad, annotation="cell_type")
    pred = st_ad.obsm["tangram_ct_pred"]
    pred.columns = [str(c) for c in pred.columns]
    table = decomposition_table(pred[types].to_numpy(), types, weights, settings, emb, where)
    props = table[types].to_numpy()
    history = ad_map.uns.get("training_history") or {}
    final = {k: history_number(v[-1]) for k, v in history.items() if len(v)}
    mode = settings.get("weights", "reference")
    summary = {"reference": reference_name, "spot_embedding": source, "cell_types": types,
               "n_reference_cells": int(reference.n_obs), "mean_proportions": dict(zip(types, props.mean(axis=0).tolist())),
               "weights": mode, "type_weights": dict(zip(types, weights.tolist())),
               "reference_counts": {t: int((labels == t).sum()) for t in types},
               "nms_mode": bool(settings.get("nms_mode", False)), "seed": int(seed),
               "training_final": final, "num_epochs": int(settings["num_epochs"])}
    labels_here = labels_of(emb)
    if labels_here is not None:
        summary["dominant_by_group"] = pd.crosstab(labels_here, table["dominant"].to_numpy()).to_dict(orient="index")
    return table, summary
