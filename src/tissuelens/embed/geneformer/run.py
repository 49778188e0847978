"""The Geneformer steps the scripts run: embed (+ activations, consistency) and perturb."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tissuelens.embed.activations import ActivationWriter
from tissuelens.embed.geneformer.extract import ActivationPlan, Encoder, embed_cells, hidden_index, pooling_mode
from tissuelens.embed.geneformer.tokenizer import GeneVocab, tokenize
from tissuelens.errors import InputError
from tissuelens.io import read_h5ad

log = logging.getLogger(__name__)


def set_threads(n: int | None) -> None:
    """torch and the tokenizer's parallel numba loops on the rule's `threads:` (0 or None: their defaults)."""
    if n:
        import numba

        from tissuelens import device

        device.set_threads(n)
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


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


def resolve_gene_sets(adata, ckpt, tokens, perturb: dict, gene_id_key: str, where: str,
                      key: str = "embed.perturb.genes") -> list[tuple[tuple, tuple]]:
    """(Ensembl ids, symbols) of each gene set to perturb: configured ids/symbols or sets of them, plus `auto_genes`."""
    ids = adata.var[gene_id_key].astype(str).str.upper()
    by_symbol = dict(zip(adata.var_names.astype(str), ids))
    symbol_of = dict(zip(ids, adata.var_names.astype(str)))

    def one(g, name):
        gid = by_symbol.get(str(g), str(g).upper())
        if gid not in ckpt.gene_tokens:
            raise InputError(f"{where}: {name}: gene '{g}' is not in the dataset's var or the model's dictionary")
        return gid, symbol_of.get(gid, gid)

    out = []
    for i, entry in enumerate(perturb["genes"]):
        members = [entry] if isinstance(entry, str) else list(entry)
        if not members:
            raise InputError(f"{where}: {key}[{i}]: empty gene set")
        pairs = [one(g, f"{key}[{i}]" if len(perturb["genes"]) > 1 or not isinstance(entry, str) else key) for g in members]
        out.append((tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)))
    if perturb["auto_genes"]:
        # the genes that appear in the most cells' token sequences
        counts = pd.Series(tokens.input_ids).map(ckpt.id_to_name()).value_counts()
        counts = counts[counts.index.isin(list(ckpt.gene_tokens))]
        for gid in counts.index[: perturb["auto_genes"]]:
            if (gid,) not in [o[0] for o in out]:
                out.append(((gid,), (symbol_of.get(gid, gid),)))
    if not out:
        raise InputError(f"{where}: no genes to perturb (set embed.perturb.genes or auto_genes)")
    return out


def _group_cells(adata, p: dict, name_key: str, eligible: np.ndarray, where: str) -> np.ndarray | None:
    """Eligible cells of the group named by perturb[name_key] (None when unset); InputError when it has none."""
    name = p[name_key]
    if name is None:
        return None
    key = p["group_key"]
    if key not in adata.obs:
        raise InputError(f"{where}: obs has no column '{key}' (embed.perturb.group_key)")
    groups = adata.obs[key].astype(str).to_numpy()
    cells = eligible[groups[eligible] == str(name)]
    if not cells.size:
        have = ", ".join(sorted(set(groups)))
        raise InputError(f"{where}: embed.perturb.{name_key}: group '{name}' has no cells with genes (obs['{key}'] has: {have})")
    return cells


def start_group(adata, p: dict, eligible: np.ndarray, where: str) -> str | None:
    """The start state: `start_group`; in a goal-state run without one, the only other group than the goal
    (logged); InputError when there are several or the start is the goal (upstream perturbs start cells only)."""
    if p["goal_group"] is None or p["start_group"] is not None:
        if p["start_group"] is not None and p["start_group"] == p["goal_group"]:
            raise InputError(f"{where}: embed.perturb.start_group: the start state '{p['start_group']}' is the goal state")
        return p["start_group"]
    _group_cells(adata, p, "goal_group", eligible, where)  # the goal group exists
    key = p["group_key"]
    groups = adata.obs[key].astype(str).to_numpy()[eligible]
    others = sorted(set(groups) - {str(p["goal_group"]), "nan"} - ({str(p["null_group"])} if p["null_group"] is not None else set()))
    if len(others) != 1:
        raise InputError(f"{where}: embed.perturb.start_group: a goal-state run perturbs the start state's cells only; "
                         f"name it (obs['{key}'] has {', '.join(others) or 'no group'} besides the goal '{p['goal_group']}')")
    log.info("embed.perturb.start_group not set: the start state is '%s', the only group of obs['%s'] besides the goal '%s'",
             others[0], key, p["goal_group"])
    return others[0]


def _subset(cells: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    if n is not None and cells.size > n:
        return np.sort(np.random.default_rng(seed).choice(cells, size=n, replace=False))
    return cells


def run_perturb(h5ad: str, checkpoint: str, model: str, settings: dict, out_tsv: str, out_cells: str, out_genes: str,
                seed: int = 0) -> pd.DataFrame:
    from tissuelens.device import resolve_device
    from tissuelens.embed.geneformer.perturb import (TYPES, GeneShiftSums, Job, every_gene, random_gene_sets, resolve_emb_mode,
                                                     score_jobs)
    from tissuelens.embed.geneformer.perturb_stats import BACKGROUNDS, combo_columns, gene_table, summarise
    from tissuelens.io import atomic_path

    p = settings["perturb"]
    adata = read_h5ad(h5ad)
    ckpt = load_geneformer(checkpoint)
    emb_mode = resolve_emb_mode(p["emb_mode"], ckpt.special_tokens, p["allow_mean_v2"])
    for kind in p["types"]:
        if kind not in TYPES:
            raise InputError(f"embed.perturb.types: '{kind}' is not one of {', '.join(TYPES)}")
        if kind in ("inhibit", "activate") and p["rank_shift"] is None:
            raise InputError(f"embed.perturb.rank_shift: '{kind}' needs a shift of 1, 2 or 3 quartiles")
    if p["combos"] and p["anchor_gene"] is None:
        raise InputError("embed.perturb.anchor_gene: combos: 1 needs an anchor gene (as InSilicoPerturber)")
    tokens, vocab = tokenize_dataset(adata, ckpt, settings, h5ad)
    sets = resolve_gene_sets(adata, ckpt, tokens, p, settings["gene_id_key"], h5ad)
    stats = p["stats"] if p["stats"] != "auto" else ("goal_state_shift" if p["goal_group"] is not None else "aggregate_gene_shifts")
    if stats == "goal_state_shift" and p["goal_group"] is None:
        raise InputError("embed.perturb.stats: goal_state_shift needs embed.perturb.goal_group")
    if stats == "vs_null" and p["null_group"] is None:
        raise InputError("embed.perturb.stats: vs_null needs embed.perturb.null_group")
    background = p.get("background", "random_genes")
    if background not in BACKGROUNDS:
        raise InputError(f"embed.perturb.background: '{background}' is not one of {', '.join(BACKGROUNDS)}")
    draws = int(p.get("null_draws", 3)) if stats == "goal_state_shift" and background == "random_genes" else 1
    all_genes = background == "all_genes" and stats in ("goal_state_shift", "mixture_model")
    if stats == "mixture_model" and not all_genes and len(sets) < 2:
        raise InputError("embed.perturb.stats: mixture_model fits two components to the perturbations' mean scores: "
                         "perturb at least two gene sets, or set embed.perturb.background: all_genes")

    eligible = np.flatnonzero(tokens.n_genes > 0)
    if "filter_pass" in adata.obs:  # Geneformer's tokenizer keeps only filter_pass cells
        eligible = eligible[adata.obs["filter_pass"].astype(bool).to_numpy()[eligible]]
    anchor = None
    if p["anchor_gene"] is not None:
        anchor = resolve_gene_sets(adata, ckpt, tokens, {"genes": [p["anchor_gene"]], "auto_genes": 0}, settings["gene_id_key"], h5ad,
                                   key="embed.perturb.anchor_gene")[0]
        a_tok = ckpt.token_dict[anchor[0][0]]  # upstream perturbs only cells that express the anchor
        eligible = eligible[[a_tok in tokens.cell(int(c)) for c in eligible]]
        if p["combos"]:
            sets = [anchor] + [(anchor[0] + s[0], anchor[1] + s[1]) for s in sets if anchor[0][0] not in s[0]] + sets
    start_name = start_group(adata, p, eligible, h5ad)
    start = _group_cells(adata, {**p, "start_group": start_name}, "start_group", eligible, h5ad)
    cells = _subset(eligible if start is None else start, p["max_cells"], seed)
    null_cells = _subset(_group_cells(adata, p, "null_group", eligible, h5ad), p["max_cells"], seed) if stats == "vs_null" else None
    if not cells.size:
        raise InputError(f"{h5ad}: no cells to perturb (none with genes{', filter_pass' if 'filter_pass' in adata.obs else ''}"
                         f"{' and the anchor gene' if anchor else ''})")

    device = resolve_device(settings["device"])
    layer = hidden_index(settings["layer"], ckpt.n_layers, "layer")
    encoder = Encoder(ckpt, device, p["precision"], upto=layer)
    goal = None
    goal_cells = _group_cells(adata, p, "goal_group", eligible, h5ad)
    if goal_cells is not None:
        goal_cells = _subset(goal_cells, p["goal_max_cells"], seed)
        pooling = "cls" if emb_mode.startswith("cls") else "mean"
        goal = embed_cells(encoder, tokens, layer=layer, pooling=pooling, batch_size=p["batch_size"], cells=goal_cells, progress=False)[goal_cells].mean(0)

    special = set(encoder.special)
    label_of = ["+".join(sym) for _, sym in sets]
    jobs = []
    for si, (ids, _) in enumerate(sets):
        toks = tuple(ckpt.token_dict[g] for g in ids)
        randoms = random_gene_sets(tokens, cells, toks, len(toks), draws, special, [seed, si])
        for kind in p["types"]:
            for c in cells:
                jobs.append(Job(int(c), toks, kind, ("test", si, kind, int(c))))
                for d, rset in enumerate(randoms.get(int(c), [])):  # draw 0 is the cell's control
                    jobs.append(Job(int(c), rset, kind, ("random", si, kind, int(c), d)))
            for c in (null_cells if null_cells is not None else []):
                jobs.append(Job(int(c), toks, kind, ("null", si, kind, int(c))))
    if all_genes:  # upstream's genes_to_perturb="all" run
        for c, genes in every_gene(tokens, cells, special).items():
            for kind in p["types"]:
                jobs += [Job(c, (int(t),), kind, ("all", int(t), kind, c)) for t in genes]
    log.info("perturbing %d gene sets x %s in %d cells (%s, %s)", len(sets), "/".join(p["types"]), cells.size, emb_mode, p["precision"])
    scores = score_jobs(encoder, tokens, jobs, layer=layer, emb_mode=emb_mode, max_len=vocab.model_input_size,
                        batch_size=p["batch_size"], goal=goal, rank_shift=p["rank_shift"], progress=True, log=log)

    id_to_name = ckpt.id_to_name()
    symbol_of = dict(zip(adata.var[settings["gene_id_key"]].astype(str).str.upper(), adata.var_names.astype(str)))
    shifts = GeneShiftSums(max(ckpt.token_dict.values()) + 1)
    rows = {"test": [], "control": {}, "null": [], "background": []}
    for j, s in zip(jobs, scores):
        if s is None:
            continue
        role, si, kind, c = j.key[:4]
        if role in ("random", "all"):
            names = [id_to_name[t] for t in j.tokens]
            rows["background"].append({"cell": c, "perturbed": "+".join(symbol_of.get(g, g) for g in names), "genes": ";".join(names),
                                       "perturbation": kind, "cos_sim": s.cos_sim, "shift": s.shift, "size": len(j.tokens),
                                       "for_set": label_of[si] if role == "random" else None, "_token": j.tokens[0] if role == "all" else -1})
            if role == "random" and j.key[4] == 0:
                rows["control"][(si, kind, c)] = (";".join(names), s.cos_sim, s.shift)
            continue
        rows[role].append({"cell": c, "perturbed": label_of[si], "genes": ";".join(sets[si][0]), "symbols": ";".join(sets[si][1]),
                           "perturbation": kind, "cos_sim": s.cos_sim, "shift": s.shift, "_si": si})
        if role == "test" and s.genes is not None:
            shifts.add((label_of[si], kind), s.genes, s.gene_cos)
    if not rows["test"]:
        raise InputError(f"{h5ad}: none of the gene sets to perturb applies to the selected cells (deletion needs every member expressed)")
    cells_table = pd.DataFrame(rows["test"])
    ctrl = [rows["control"].get((r["_si"], r["perturbation"], r["cell"]), (None, np.nan, np.nan)) for r in rows["test"]]
    cells_table["control_gene"] = [x[0] for x in ctrl]
    cells_table["control_cos_sim"] = [x[1] for x in ctrl]
    cells_table["control_shift"] = [x[2] for x in ctrl]
    cells_table = cells_table.drop(columns="_si")
    cells_table.insert(1, "obs_name", adata.obs_names[cells_table["cell"].to_numpy(dtype=int)].astype(str))
    null = pd.DataFrame(rows["null"]).drop(columns="_si") if rows["null"] else pd.DataFrame(columns=["cell", "perturbed", "perturbation", "cos_sim", "shift"])

    bg_cols = ["cell", "perturbed", "genes", "perturbation", "cos_sim", "shift", "size", "for_set", "_token"]
    bg = pd.DataFrame(rows["background"], columns=bg_cols)
    if background == "all_genes":  # upstream's megalist order: genes by token, then cells
        bg = bg.sort_values(["_token", "cell"], kind="stable")
    if stats == "goal_state_shift" and background == "random_genes":
        bg = bg[bg["for_set"].notna()]
    elif all_genes:
        bg = bg[bg["for_set"].isna()]
    uses_bg = stats == "goal_state_shift" or all_genes
    try:
        summary = summarise(cells_table, stats, goal is not None, null, bg if uses_bg else None, background)
    except ValueError as e:  # no background (cells too short for random sets), or too few means for the mixture
        raise InputError(f"{h5ad}: embed.perturb.stats: {e}") from None
    summary["start_group"] = start_name
    if p["combos"]:
        summary = combo_columns(summary, cells_table, label_of[0])
    summary.insert(0, "model", model)
    summary["emb_mode"] = emb_mode
    summary["untrained"] = ckpt.untrained
    genes_table = gene_table(shifts.table(), id_to_name, symbol_of)
    parts = [cells_table.assign(population="perturbed")]
    if len(null):
        null.insert(1, "obs_name", adata.obs_names[null["cell"].to_numpy(dtype=int)].astype(str))
        parts.append(null.assign(population="null"))
    if uses_bg and len(bg):  # the background the p-values (or the mixture) were computed against
        bg = bg.drop(columns="_token").rename(columns={"size": "n_genes"})
        bg.insert(1, "obs_name", adata.obs_names[bg["cell"].to_numpy(dtype=int)].astype(str))
        parts.append(bg.assign(population="random_genes" if background == "random_genes" else "all_genes"))
    cells_table = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    with atomic_path(out_cells) as tmp:
        cells_table.to_parquet(tmp, index=False)
    with atomic_path(out_genes) as tmp:
        genes_table.to_parquet(tmp, index=False)
    with atomic_path(out_tsv) as tmp:
        summary.to_csv(tmp, sep="\t", index=False)
    return summary
