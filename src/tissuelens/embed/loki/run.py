"""The Loki task rules (annotate, retrieve, predex) on a Loki embed rule's embeddings.h5ad.

Each `run_*` checks its inputs, computes, and returns what its script writes (tables and a summary),
so that a bad input fails before any output exists. Imported by the Loki stack (Python 3.9).
"""

from __future__ import annotations

import logging

import numpy as np

from tissuelens.embed import loki_tasks as lt
from tissuelens.embed.loki import summary as summary_of
from tissuelens.errors import InputError

log = logging.getLogger(__name__)
IMAGE, TEXT = "X_loki_image", "X_loki_text"


def coordinates(adata) -> tuple:
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2] if "spatial" in adata.obsm else np.full((adata.n_obs, 2), np.nan)
    return xy[:, 0], xy[:, 1]


def image_embeddings(emb, enabled, where: str, task: str):
    """The spots' image embeddings; None (task skipped) when there are none and `enabled` is auto."""
    if IMAGE in emb.obsm:
        return np.asarray(emb.obsm[IMAGE], dtype=np.float64)
    if enabled is True:
        raise InputError(f"{where}: no image embeddings (obsm['{IMAGE}']): the dataset has no H&E image, which "
                         f"Loki's {task} needs (set embed.loki.{task}.enabled: auto to skip it)")
    return None


def labels_of(adata, key: str = "group"):
    if key not in adata.obs:
        return None
    values = adata.obs[key]
    return None if values.isna().any() else values.astype(str).to_numpy()


# -- annotate ------------------------------------------------------------------------------------


def marker_net(path, fmt: str, species, var_names, min_markers: int, where: str):
    """The marker table (analyze stage's reader) restricted to genes in the data."""
    from tissuelens.analyze.markers import match_genes, read_markers

    net = read_markers(path, fmt, species)
    return match_genes(net, var_names, int(min_markers), f"{where} ({path})")


def read_sentences(path, where: str) -> dict:
    """{cell type: sentence} from a curated CSV (columns cell_type, sentence), in file order, used verbatim."""
    import pandas as pd

    from pathlib import Path

    if not Path(path).is_file():
        raise InputError(f"{where}: embed.loki.annotate.sentences: file not found: {path}")
    try:
        t = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas' parser errors
        raise InputError(f"{where}: {path}: not a readable CSV ({type(e).__name__})") from None
    missing = [c for c in ("cell_type", "sentence") if c not in t]
    if missing:
        raise InputError(f"{where}: {path}: no column {', '.join(missing)} (needs cell_type,sentence)")
    t = t.assign(cell_type=t["cell_type"].str.strip(), sentence=t["sentence"].str.split().str.join(" "))
    if not len(t) or (t["cell_type"] == "").any() or (t["sentence"] == "").any():
        raise InputError(f"{where}: {path}: every row needs a cell type and a non-empty sentence")
    dup = sorted(set(t["cell_type"][t["cell_type"].duplicated()]))
    if dup:
        raise InputError(f"{where}: {path}: cell type listed twice: {', '.join(dup)}")
    return dict(zip(t["cell_type"], t["sentence"]))


def context_report(sentences: dict, tokenizer, context_length: int) -> dict:
    """Per type: the sentence's genes (words) in order, how many reach the model (open_clip keeps
    context_length - 2 BPE tokens) and the ones cut."""
    from tissuelens.embed.loki import gene_token_lengths

    out = {}
    for t, sentence in sentences.items():
        words = np.asarray(sentence.split(), dtype=object)
        lens = gene_token_lengths(tokenizer, words) if len(words) else np.zeros(0, dtype=np.int64)
        n = int((np.cumsum(lens) <= context_length - 2).sum())
        out[t] = {"genes": [str(w) for w in words], "genes_in_context": n, "cut": [str(w) for w in words[n:]]}
    return out


def read_bulk(path, where: str):
    """(sample names, gene symbols, expression (samples, genes)) from a bulk table: first column the gene
    symbols, one numeric column per sample (CSV, or TSV by a .tsv/.txt name)."""
    import pandas as pd

    from pathlib import Path

    if not Path(path).is_file():
        raise InputError(f"{where}: embed.loki.annotate.bulk: file not found: {path}")
    sep = "\t" if str(path).endswith((".tsv", ".txt", ".tsv.gz")) else ","
    try:
        t = pd.read_csv(path, sep=sep, index_col=0)
    except Exception as e:  # pandas' parser errors
        raise InputError(f"{where}: {path}: not a readable table ({type(e).__name__})") from None
    if not t.shape[1] or not len(t):
        raise InputError(f"{where}: {path}: needs a gene column and at least one sample column")
    try:
        x = t.to_numpy(dtype=np.float64).T
    except (TypeError, ValueError):
        raise InputError(f"{where}: {path}: sample columns must be numeric") from None
    if not np.all(np.isfinite(x)) or (x < 0).any():
        raise InputError(f"{where}: {path}: expression must be finite and non-negative")
    return [str(c) for c in t.columns], np.asarray(t.index.astype(str)), x


def bulk_scores(image_emb: np.ndarray, bulk_emb: np.ndarray) -> np.ndarray:
    """(spots, samples): Loki's annotate_with_bulk (tensor=False) per sample: dot product of every spot's
    image embedding with the sample's text embedding, softmax over the spots, then min-max to [0, 1]."""
    sim = np.asarray(image_emb, dtype=np.float64) @ np.asarray(bulk_emb, dtype=np.float64).T
    e = np.exp(sim - sim.max(axis=0, keepdims=True))
    p = e / e.sum(axis=0, keepdims=True)
    lo, hi = p.min(axis=0, keepdims=True), p.max(axis=0, keepdims=True)
    return (p - lo) / np.where(hi > lo, hi - lo, 1.0)


def run_annotate(emb, var_names, ckpt, settings: dict, where: str):
    """(per-spot table, summary): best type from the image (and the text) embeddings."""
    import pandas as pd
    import torch

    from tissuelens.device import resolve_device
    from tissuelens.embed.loki import encode_texts

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
        from tissuelens.embed import gene_sentences as gs

        samples, symbols, bx = bulk
        bulk_sentences, _, _ = gs.gene_sentences(bx, symbols, gs.load_housekeeping(None))
        bulk_emb = encode_texts(model, tokenizer, [str(b) for b in bulk_sentences], device=device, progress=False)
        scores = bulk_scores(np.asarray(emb.obsm[IMAGE]), bulk_emb)
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


# -- retrieve ------------------------------------------------------------------------------------


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


# -- PredEx --------------------------------------------------------------------------------------


def expression(adata, genes: str):
    """(log-normalised X dense float64 (n, g), gene names) of the highly variable genes or all genes."""
    import scipy.sparse as sp

    cols = np.ones(adata.n_vars, dtype=bool)
    if genes == "highly_variable" and "highly_variable" in adata.var:
        cols = adata.var["highly_variable"].to_numpy(dtype=bool)
    x = adata.X[:, np.flatnonzero(cols)]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return np.asarray(x, dtype=np.float64), np.asarray(adata.var_names[cols]).astype(str)


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


# -- decompose (Tangram) -----------------------------------------------------------------------


def feature_anndata(x: np.ndarray, obs_names, obs=None):
    """An AnnData whose 'genes' are the embedding dimensions (Loki's generate_feature_ad)."""
    import anndata as ad
    import pandas as pd

    names = [f"omiclip_{j}" for j in range(x.shape[1])]
    out = ad.AnnData(np.asarray(x, dtype=np.float32), obs=pd.DataFrame(index=np.asarray(obs_names).astype(str)),
                     var=pd.DataFrame(index=names))
    if obs is not None:
        for key, values in obs.items():
            out.obs[key] = np.asarray(values)
    return out


def abundance_weights(types, labels, settings: dict, where: str) -> np.ndarray:
    """Each type's weight for the per-spot proportions (see `proportions`): the reference's cell count per type
    (`weights: reference`, Loki's tutorials), the user's `fractions` (`weights: fractions`), or 1 (`none`)."""
    mode = settings.get("weights", "reference")
    if mode == "none":
        return np.ones(len(types))
    if mode == "reference":
        labels = np.asarray(labels).astype(str)
        return np.array([float((labels == t).sum()) for t in types])
    if mode != "fractions":
        raise InputError(f"{where}: embed.loki.decompose.weights: '{mode}' is not one of reference, fractions, none")
    given = settings.get("fractions")
    if not given:
        raise InputError(f"{where}: embed.loki.decompose.weights: fractions needs embed.loki.decompose.fractions "
                         "(a fraction for every cell type of the reference)")
    given = {str(k): v for k, v in given.items()}
    missing, unknown = [t for t in types if t not in given], sorted(set(given) - set(types))
    if missing or unknown:
        raise InputError(f"{where}: embed.loki.decompose.fractions: "
                         + (f"no fraction for {', '.join(missing)}" if missing else f"no reference cells of type {', '.join(unknown)}")
                         + f" (the reference's types: {', '.join(types)})")
    w = np.array([float(given[t]) for t in types])
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise InputError(f"{where}: embed.loki.decompose.fractions: fractions must be finite, non-negative and not all 0")
    return w / w.sum()


def proportions(ct_pred, weights=None) -> np.ndarray:
    """Per-spot cell-type proportions from Tangram's clusters-mode projection (tangram_ct_pred, spots x types).

    In clusters mode each type's mapping row sums to 1 over the spots: a column is where that type's cells
    go, not how many there are. Each column is multiplied by its type's abundance (`weights`: cell counts
    or fractions; None = 1), then each spot is divided by its sum (all-zero spots stay 0)."""
    p = np.clip(np.asarray(ct_pred, dtype=np.float64), 0, None)
    if weights is not None:
        p = p * np.asarray(weights, dtype=np.float64)[None, :]
    total = p.sum(axis=1, keepdims=True)
    return p / np.where(total > 0, total, 1.0)


def normalize_percentile(scores, min_percentile: float = 5, max_percentile: float = 95) -> np.ndarray:
    """Each column clipped to its [min, max] percentiles and scaled to [0, 1] (Loki's normalize_percentile;
    a constant column becomes 0 where Loki divides by zero)."""
    x = np.asarray(scores, dtype=np.float64)
    lo = np.percentile(x, min_percentile, axis=0)
    hi = np.percentile(x, max_percentile, axis=0)
    span = hi - lo
    out = (np.clip(x, lo, hi) - lo) / np.where(span > 0, span, 1.0)
    return np.where(span > 0, out, 0.0)


def nms(scores) -> np.ndarray:
    """Loki's NMS_mode: each spot keeps its largest score (every tie kept), the other types are set to 0."""
    x = np.asarray(scores, dtype=np.float64)
    return np.where(x == x.max(axis=1, keepdims=True), x, 0.0)


def seeded_tangram_map(sc_ad, st_ad, settings: dict, seed: int):
    """tg.map_cells_to_space (clusters mode, Loki's arguments) reproducible for every seed.

    tangram-sc 1.0.4 seeds numpy (its initial map) and torch only `if random_state:`, so seed 0 would start
    from numpy's global state: we seed both ourselves (numpy's legacy generator takes seed mod 2**32) and
    restore numpy's global state afterwards."""
    import tangram as tg
    import torch

    state = np.random.get_state()
    try:
        np.random.seed(int(seed) % 2**32)
        torch.manual_seed(int(seed))
        return tg.map_cells_to_space(sc_ad, st_ad, mode="clusters", cluster_label="cell_type",
                                     device=settings.get("device", "cpu"), scale=False, density_prior="uniform",
                                     random_state=int(seed) % 2**32, verbose=False, num_epochs=int(settings["num_epochs"]))
    finally:
        np.random.set_state(state)


def cell_counts(emb, settings: dict, where: str):
    """The spots' cell counts from obs[`cell_count_key`] (None when unset); InputError when absent or not counts."""
    key = settings.get("cell_count_key")
    if key is None:
        return None
    if key not in emb.obs:
        raise InputError(f"{where}: embed.loki.decompose.cell_count_key: obs has no column '{key}'")
    try:
        n = np.asarray(emb.obs[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: embed.loki.decompose.cell_count_key: obs['{key}'] is not numeric") from None
    if not np.all(np.isfinite(n)) or (n < 0).any():
        raise InputError(f"{where}: embed.loki.decompose.cell_count_key: obs['{key}'] has negative or missing counts")
    return n


def decomposition_table(ct_pred, types, weights, settings: dict, emb, where: str = "decompose"):
    """The per-spot table: proportions of every type, `dominant`, the raw projection (`mapping:<type>`) and,
    with `nms_mode`, Loki's percentile-normalised (`percentile:<type>`) and NMS (`nms:<type>`) scores."""
    import pandas as pd

    raw = np.asarray(ct_pred, dtype=np.float64)
    props = proportions(raw, weights)
    x, y = coordinates(emb)
    cols = {"obs_name": np.asarray(emb.obs_names).astype(str), "x": x, "y": y}
    cols.update({t: props[:, j] for j, t in enumerate(types)})
    cols["dominant"] = np.asarray(types, dtype=object)[props.argmax(axis=1)]
    cols.update({f"mapping:{t}": raw[:, j] for j, t in enumerate(types)})
    counts = cell_counts(emb, settings, where)
    if counts is not None:  # expected cells of each type per spot (Loki's cell_num with the proportions)
        cols["n_cells"] = counts
        cols.update({f"cells:{t}": props[:, j] * counts for j, t in enumerate(types)})
    if settings.get("nms_mode"):
        major = settings.get("major_types") or list(types)
        idx = [types.index(t) for t in major]
        pct = normalize_percentile(raw[:, idx], settings.get("min_percentile", 5), settings.get("max_percentile", 95))
        kept = nms(pct)
        cols.update({f"percentile:{t}": pct[:, j] for j, t in enumerate(major)})
        cols.update({f"nms:{t}": kept[:, j] for j, t in enumerate(major)})
    return pd.DataFrame(cols)


def _number(value) -> float | None:
    """A float from Tangram's training history (numbers, or strings such as 'tensor(-0.99, grad_fn=...)')."""
    import re

    try:
        x = float(value)
    except (TypeError, ValueError):
        m = re.search(r"-?\d+(\.\d+)?(e-?\d+)?", str(value))
        x = float(m.group(0)) if m else float("nan")
    return x if np.isfinite(x) else None  # unused regularisers are NaN


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
    final = {k: _number(v[-1]) for k, v in history.items() if len(v)}
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
