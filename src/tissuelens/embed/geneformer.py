"""The Geneformer steps the scripts run: embed (+ activations, consistency) and perturb."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tissuelens.embed.activations import ActivationWriter
from tissuelens.embed.geneformer_extract import ActivationPlan, Encoder, embed_cells, hidden_index, pooling_mode
from tissuelens.embed.geneformer_tokenizer import GeneVocab, tokenize
from tissuelens.errors import InputError
from tissuelens.io import read_h5ad

log = logging.getLogger(__name__)


def load_geneformer(checkpoint: str):
    from tissuelens.models import load_model_dir

    ckpt = load_model_dir(checkpoint)
    if type(ckpt).__name__ != "GeneformerCheckpoint":
        raise InputError(f"{checkpoint}: not a Geneformer checkpoint")
    return ckpt


def clean_uns(obj):
    """Nested dicts without None (h5ad cannot store None)."""
    if isinstance(obj, dict):
        return {str(k): clean_uns(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [clean_uns(v) for v in obj if v is not None]
    return obj


def tokenize_dataset(adata, ckpt, settings: dict, where: str):
    vocab = GeneVocab.from_checkpoint(ckpt, settings.get("max_input_size"))
    tokens = tokenize(
        adata,
        vocab,
        gene_id_key=settings["gene_id_key"],
        counts_layer=settings["counts_layer"],
        n_counts_key=settings.get("n_counts_key"),
        where=where,
    )
    empty = tokens.empty_cells
    if empty.size:
        names = ", ".join(map(str, adata.obs_names[empty[:5]]))
        msg = f"{where}: {empty.size} cells have no gene in the model's dictionary (e.g. {names})"
        if settings.get("empty_cells") == "error":
            raise InputError(msg + "; set embed.empty_cells: nan to keep them with NaN embeddings")
        log.warning("%s; their embeddings are NaN", msg)
    return tokens, vocab


def run_embed(h5ad: str, checkpoint: str, model: str, settings: dict, out_h5ad: str, out_activations: str, seed: int = 0) -> dict:
    import anndata as ad

    from tissuelens.device import resolve_device
    from tissuelens.embed.metrics import consistency_metrics
    from tissuelens.io import atomic_path, write_h5ad

    adata = read_h5ad(h5ad)
    ckpt = load_geneformer(checkpoint)
    tokens, vocab = tokenize_dataset(adata, ckpt, settings, h5ad)
    device = resolve_device(settings["device"])
    layer = hidden_index(settings["layer"], ckpt.n_layers, "layer")
    acts = settings["activations"]
    act_layers = [hidden_index(k, ckpt.n_layers, "activations.layers") for k in acts["layers"]]
    mode = pooling_mode(settings["pooling"], ckpt.special_tokens)
    encoder = Encoder(ckpt, device, settings["precision"], upto=max([layer] + act_layers))
    info = {
        "model": model,
        "kind": "geneformer",
        "untrained": ckpt.untrained,
        "checkpoint": str(checkpoint),
        "version": ckpt.version,
        "layer": settings["layer"],
        "hidden_state_index": layer,
        "pooling": mode,
        "model_input_size": vocab.model_input_size,
        "precision": settings["precision"],
        "device": str(device),
        "n_cells": int(tokens.n_cells),
        "n_cells_without_genes": int(tokens.empty_cells.size),
        "n_var_genes": tokens.n_var_genes,
        "n_genes_in_dictionary": tokens.n_known_genes,
    }
    log.info("embedding %d cells with %s (%s, %s, layer %d, %s pooling, untrained=%s)", tokens.n_cells, model, ckpt.version, device, settings["layer"], mode, ckpt.untrained)

    plan = ActivationPlan.make(tokens, act_layers, acts["max_cells"], acts["max_tokens_per_cell"], seed)
    with atomic_path(out_activations) as tmp:
        writer = ActivationWriter(
            tmp,
            plan.layers,
            ckpt.d_model,
            plan.index(tokens, adata.obs_names, ckpt.id_to_name()),
            meta={
                "model": model,
                "kind": "geneformer",
                "untrained": ckpt.untrained,
                "checkpoint": str(checkpoint),
                "version": ckpt.version,
                "layer_semantics": "k = index into hidden_states: 0 = embedding output, k = output of encoder layer k",
                "position_semantics": "index in the model input sequence (V2: 0 = <cls>)",
                "max_tokens_per_cell": acts["max_tokens_per_cell"],
            },
        )
        emb = embed_cells(encoder, tokens, layer=layer, pooling=mode, batch_size=settings["batch_size"], plan=plan, writer=writer)
        act_meta = writer.close()
    info["activations"] = {k: act_meta[k] for k in ("layers", "n_tokens", "n_cells")}

    cons = settings["consistency"]
    if cons["enabled"]:
        eligible = np.flatnonzero(tokens.n_genes > 0)
        subset = np.sort(np.random.default_rng(seed).choice(eligible, size=min(cons["n_cells"], eligible.size), replace=False))
        other = encoder if cons["precision"] == settings["precision"] else Encoder(ckpt, device, cons["precision"], upto=layer)
        emb2 = embed_cells(other, tokens, layer=layer, pooling=mode, batch_size=cons["batch_size"], cells=subset)
        info["consistency"] = {
            "against": {"batch_size": cons["batch_size"], "precision": cons["precision"]},
            "run": {"batch_size": settings["batch_size"], "precision": settings["precision"]},
            **consistency_metrics(emb[subset], emb2[subset], seed=seed),
        }

    out = ad.AnnData(obs=adata.obs.copy())
    out.obsm[f"X_{model}"] = emb
    for key in ("spatial",):
        if key in adata.obsm:
            out.obsm[key] = np.asarray(adata.obsm[key])
    out.obs[f"{model}_n_genes"] = tokens.n_genes.astype(np.int64)
    out.uns["embed"] = clean_uns({model: info})
    write_h5ad(out, out_h5ad)
    return info


# -- perturbation -------------------------------------------------------------------------------


def resolve_genes(adata, ckpt, tokens, perturb: dict, gene_id_key: str, where: str) -> list[tuple[str, str]]:
    """(Ensembl id, symbol) of the genes to perturb: configured ids or symbols, plus `auto_genes`."""
    ids = adata.var[gene_id_key].astype(str).str.upper()
    by_symbol = dict(zip(adata.var_names.astype(str), ids))
    symbol_of = dict(zip(ids, adata.var_names.astype(str)))
    out = []
    for g in perturb["genes"]:
        gid = by_symbol.get(g, str(g).upper())
        if gid not in ckpt.gene_tokens:
            raise InputError(f"{where}: perturb gene '{g}' is not in the dataset's var or the model's dictionary")
        out.append((gid, symbol_of.get(gid, gid)))
    if perturb["auto_genes"]:
        # the genes that appear in the most cells' token sequences
        id_to_name = ckpt.id_to_name()
        counts = pd.Series(tokens.input_ids).map(id_to_name).value_counts()
        counts = counts[counts.index.isin(list(ckpt.gene_tokens))]
        for gid in counts.index[: perturb["auto_genes"]]:
            if gid not in [o[0] for o in out]:
                out.append((gid, symbol_of.get(gid, gid)))
    if not out:
        raise InputError(f"{where}: no genes to perturb (set embed.perturb.genes or auto_genes)")
    return out


def run_perturb(h5ad: str, checkpoint: str, embeddings: str, model: str, settings: dict, out_tsv: str, out_cells: str, seed: int = 0) -> pd.DataFrame:
    from tissuelens.device import resolve_device
    from tissuelens.embed.geneformer_perturb import TYPES, perturb_cells, random_controls, summarise
    from tissuelens.io import atomic_path

    p = settings["perturb"]
    adata = read_h5ad(h5ad)
    ckpt = load_geneformer(checkpoint)
    tokens, vocab = tokenize_dataset(adata, ckpt, settings, h5ad)
    genes = resolve_genes(adata, ckpt, tokens, p, settings["gene_id_key"], h5ad)
    device = resolve_device(settings["device"])
    layer = hidden_index(settings["layer"], ckpt.n_layers, "layer")
    mode = pooling_mode(settings["pooling"], ckpt.special_tokens)
    encoder = Encoder(ckpt, device, settings["precision"], upto=layer)

    cells = np.flatnonzero(tokens.n_genes > 0)
    goal = None
    if p["start_group"] is not None or p["goal_group"] is not None:
        key = p["group_key"]
        if key not in adata.obs:
            raise InputError(f"{h5ad}: obs has no column '{key}' (embed.perturb.group_key)")
        groups = adata.obs[key].astype(str).to_numpy()
        for name in (p["start_group"], p["goal_group"]):
            if name is not None and name not in set(groups):
                raise InputError(f"{h5ad}: group '{name}' not in obs['{key}'] (has: {', '.join(sorted(set(groups)))})")
        if p["start_group"] is not None:
            cells = cells[groups[cells] == p["start_group"]]
        if p["goal_group"] is not None:
            emb = read_h5ad(embeddings).obsm[f"X_{model}"]
            goal_rows = emb[(groups == p["goal_group"]) & np.isfinite(emb).all(1)]
            goal = goal_rows.mean(0)
    if p["max_cells"] is not None and cells.size > p["max_cells"]:
        cells = np.sort(np.random.default_rng(seed).choice(cells, size=p["max_cells"], replace=False))

    special = {t for t in (ckpt.cls_id, ckpt.eos_id, ckpt.pad_id) if t is not None}
    tables = []
    for gid, symbol in genes:
        token = ckpt.token_dict[gid]
        controls = random_controls(tokens, cells, token, special, seed)
        for kind in p["types"]:
            if kind not in TYPES:
                raise InputError(f"embed.perturb.types: '{kind}' is not one of {', '.join(TYPES)}")
            kw = dict(layer=layer, mode=mode, max_len=vocab.model_input_size, batch_size=p["batch_size"], goal=goal)
            res = perturb_cells(encoder, tokens, cells, token, kind, **kw)
            ctrl_rows = []
            for ctoken in sorted(set(controls.values())):
                ccells = np.array([c for c, t in controls.items() if t == ctoken and c in set(res["cell"])])
                if ccells.size:
                    r = perturb_cells(encoder, tokens, ccells, ctoken, kind, **kw)
                    ctrl_rows.append(r.assign(control_gene=ckpt.id_to_name()[ctoken]))
            ctrl_rows = [r for r in ctrl_rows if len(r)]
            ctrl = pd.concat(ctrl_rows) if ctrl_rows else pd.DataFrame({"cell": pd.Series(dtype=int), "cos_sim": pd.Series(dtype=float), "shift": pd.Series(dtype=float), "control_gene": pd.Series(dtype=str)})
            ctrl = ctrl.rename(columns={"cos_sim": "control_cos_sim", "shift": "control_shift"})
            res = res.merge(ctrl, on="cell", how="left")
            res.insert(1, "obs_name", adata.obs_names[res["cell"].to_numpy(dtype=int)].astype(str))
            res.insert(2, "gene", gid)
            res.insert(3, "symbol", symbol)
            res.insert(4, "perturbation", kind)
            tables.append(res)
            log.info("perturbed %s (%s) by %s in %d cells", symbol, gid, kind, len(res))
    tables = [t for t in tables if len(t)]
    if not tables:
        raise InputError(f"{h5ad}: none of the genes to perturb is expressed in the selected cells")
    cells_table = pd.concat(tables, ignore_index=True)
    summary = summarise(cells_table)
    summary.insert(0, "model", model)
    summary["untrained"] = ckpt.untrained
    with atomic_path(out_cells) as tmp:
        cells_table.to_parquet(tmp, index=False)
    with atomic_path(out_tsv) as tmp:
        summary.to_csv(tmp, sep="\t", index=False)
    return summary
