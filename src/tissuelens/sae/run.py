"""What the SAE scripts call: `train` (rule train_sae) and `analyze` (rule analyze_sae).

Each checks its inputs before anything heavy runs and writes its outputs together (`outputs.staged`), so a
bad input fails with one clear error and leaves no output behind.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def train(activations, settings: dict, seed: int, *, out_sae, metrics, history, loss_curve, checkpoints=None,
          threads: int | None = None) -> dict:
    """Train an SAE on one layer of `activations`; write it in SAELens' format, metrics.json, the per-step
    training log and the loss curve; returns the metrics. `seed` is used when settings.seed is null;
    `checkpoints` (with settings n_checkpoints > 0) is removed once the run is complete."""
    from tissuelens.device import resolve_device, set_threads
    from tissuelens.io import write_json
    from tissuelens.sae.activations import open_activations, split_rows
    from tissuelens.sae.settings import check_sizes, resolve_settings

    settings = resolve_settings(settings)
    seed = int(settings["seed"] if settings["seed"] is not None else seed)
    acts = open_activations(activations, settings["layer"], settings["include_special_tokens"])
    d_sae = check_sizes(settings, acts.d_in, f"sae settings for {acts.path}")
    device = resolve_device(settings["device"])

    from tissuelens.sae.metrics import evaluate, plot_training
    from tissuelens.sae.outputs import staged
    from tissuelens.sae.train import load_sae, save_sae, train_on_activations

    set_threads(threads)
    train_rows, eval_rows = split_rows(acts.rows, settings["eval_tokens"], seed)
    if eval_rows.size == 0:
        log.warning("too few tokens to hold out an evaluation set; metrics use the training tokens")
        eval_rows = train_rows
    log.info("layer %s of %s: %d training tokens, %d evaluation tokens, d_in %d, d_sae %d (%s) on %s",
             acts.layer, acts.model, train_rows.size, eval_rows.size, acts.d_in, d_sae, settings["architecture"], device)

    with staged(sae=out_sae, metrics=metrics, history=history, curve=loss_curve) as out:
        result = train_on_activations(acts, train_rows, settings, seed, str(device), checkpoint_dir=checkpoints)
        save_sae(result, out["sae"])
        sae = load_sae(out["sae"], str(device))  # evaluate what SAELens loads back, not the object in memory
        scores, frequency = evaluate(sae, acts.array, eval_rows, settings["batch_size"], str(device),
                                     settings["dense_threshold"])
        scores = {
            "model": acts.model,
            "layer": acts.layer,
            "untrained_model": bool(acts.meta.get("untrained", False)),
            "architecture": settings["architecture"],
            "d_in": acts.d_in,
            "d_sae": d_sae,
            "expansion_factor": settings["expansion_factor"],
            "k": settings["k"] if settings["architecture"] == "topk" else None,
            "l1_coefficient": settings["l1_coefficient"] if settings["architecture"] == "standard" else None,
            "seed": seed,
            "training_tokens": int(result.history["tokens"].iloc[-1]),
            "training_steps": len(result.history),
            "epochs": float(result.history["tokens"].iloc[-1]) / max(train_rows.size, 1),
            "final_loss": float(result.history["loss"].iloc[-1]),
            "train_seconds": result.seconds,
            "tokens_per_second": result.tokens_per_second,
            "device": str(device),
            **scores,
        }
        write_json(scores, out["metrics"])
        result.history.to_csv(out["history"], sep="\t", index=False)
        plot_training(result.history, result.log_feature_sparsity, frequency, out["curve"])
    if checkpoints and Path(checkpoints).is_dir():
        import shutil

        shutil.rmtree(checkpoints)  # the run is complete; nothing to resume
    log.info("L0 %.2f, FVE %.3f, MSE %.4g, dead %d, dense %d", scores["l0"], scores["fraction_variance_explained"],
             scores["mse"], scores["dead_features"], scores["dense_features"])
    return scores


def analyze(sae_dir, activations, preprocessed, settings: dict, *, outputs: dict, factors_path=None, metrics=None,
            loss_curve=None, title: str | None = None, threads: int | None = None) -> None:
    """Tie a trained SAE's features to genes, cells, groups, tissue space and (with `factors_path`) PNMF-GP
    factors. `outputs` names the files (`outputs.staged` keys): features, genes, groups, factors, dashboard and
    optionally cells (a cells x features sparse .npz aligned with the preprocessed obs); `metrics` and
    `loss_curve` of the training run go into the dashboard."""
    import numpy as np
    import pandas as pd

    from tissuelens.device import resolve_device, set_threads
    from tissuelens.errors import InputError
    from tissuelens.io import read_json
    from tissuelens.progress import Progress
    from tissuelens.sae.activations import open_activations
    from tissuelens.sae.settings import resolve_settings

    settings = resolve_settings(settings)
    sae_cfg_path = Path(sae_dir) / "cfg.json"
    if not sae_cfg_path.is_file():
        raise InputError(f"{sae_dir}: not a SAELens SAE directory (cfg.json missing)")
    sae_cfg = read_json(sae_cfg_path)
    layer = sae_cfg.get("metadata", {}).get("layer", settings["layer"])
    acts = open_activations(activations, layer, settings["include_special_tokens"])
    if int(sae_cfg["d_in"]) != acts.d_in:
        raise InputError(f"{sae_dir}: SAE d_in {sae_cfg['d_in']} does not match {acts.path} width {acts.d_in}")
    obs_names, groups, coords, symbols, graph, sections = read_preprocessed(preprocessed)
    factors = None
    if factors_path:
        from tissuelens.sae.features import check_factors

        try:
            factors = np.load(factors_path)
        except (OSError, ValueError) as exc:
            raise InputError(f"{factors_path}: not a readable .npy array ({exc})") from None
        factors = check_factors(factors, obs_names.size, factors_path)
    device = str(resolve_device(settings["device"]))

    from tissuelens.sae import cell_activations, dashboard, features
    from tissuelens.sae.activations import sequential_batches
    from tissuelens.sae.metrics import encode_decode
    from tissuelens.sae.outputs import staged
    from tissuelens.sae.train import load_sae

    set_threads(threads)
    sae = load_sae(sae_dir, device)
    sae.eval()
    d_sae = int(sae.cfg.d_sae)

    index = acts.index
    gene_codes, gene_names = pd.factorize(index["gene"])
    cell_codes = index["cell"].to_numpy(np.int64)
    if cell_codes.min() < 0:
        raise InputError(f"{acts.directory / 'index.parquet'}: negative cell numbers")
    n_cells = int(cell_codes.max()) + 1
    cell_obs = pd.Series(index["obs_name"].to_numpy(), index=cell_codes)
    cell_obs = cell_obs[~cell_obs.index.duplicated()].reindex(range(n_cells)).fillna("").to_numpy(str)
    gene_names = np.asarray(gene_names, dtype=str)
    gene_symbols = np.array([symbols.get(g, g) for g in gene_names], dtype=object)

    def encoded():
        bar = Progress(acts.rows.size, "SAE encoding", unit="tokens", logger=log)
        for rows, x in sequential_batches(acts.array, acts.rows, settings["analysis_batch_size"]):
            f_acts, _ = encode_decode(sae, x, device)
            bar.update(len(rows))
            yield rows, f_acts

    log.info("encoding %d tokens with a %d-latent SAE", acts.rows.size, d_sae)
    sums = features.accumulate(encoded(), gene_codes, cell_codes, gene_names.size, n_cells, d_sae)
    genes = features.gene_table(sums, gene_names, gene_symbols, settings["top_genes"], settings["min_gene_tokens"])

    # cells with analysed tokens, aligned with the preprocessed AnnData by obs name
    has_tokens = np.flatnonzero(sums.cell_tokens > 0)
    cell_matrix = sums.cell_matrix()[has_tokens]
    names = cell_obs[has_tokens]
    pos = pd.Index(obs_names).get_indexer(names)
    if (pos < 0).any():
        missing = names[pos < 0][:3]
        raise InputError(f"{acts.directory / 'index.parquet'}: cells {', '.join(missing)} are not in {preprocessed}")
    top_cell_names = features.top_cells(cell_matrix, names, settings["top_cells"])

    group_df = None
    if groups is not None and len(groups.categories) >= 2:
        group_df = features.group_table(cell_matrix, groups[pos])
    live = np.flatnonzero(sums.feature_fired > 0)
    moran = None
    if coords is not None:
        moran = features.morans_i(cell_matrix, coords[pos], live, settings["moran_neighbors"],
                                  None if graph is None else graph[pos][:, pos],
                                  None if sections is None else sections[pos])
    factor_r = None
    if factors is not None:
        factor_r = features.factor_correlations(cell_matrix, factors[pos])
    w_dec = sae.W_dec.detach().float().cpu().numpy()
    table = features.feature_table(sums, genes, group_df, moran, factor_r, top_cell_names,
                                   settings["dense_threshold"], decoder_norm=np.linalg.norm(w_dec, axis=1))
    factor_df = features.factor_table(factor_r if factor_r is not None else np.zeros((d_sae, 0)))

    detail = dashboard.choose_features(table, settings["dashboard_features"])
    histograms = {f: [] for f in detail}
    if detail:
        cols = np.asarray(detail)
        for rows, x in sequential_batches(acts.array, acts.rows, settings["analysis_batch_size"]):
            f_acts, _ = encode_decode(sae, x, device)
            sub = f_acts[:, cols]
            for j, f in enumerate(detail):
                v = sub[:, j]
                histograms[f].append(v[v != 0])
    histograms = {f: np.concatenate(v) if v else np.empty(0) for f, v in histograms.items()}
    cell_values = None
    if coords is not None and detail:
        dense = cell_matrix[:, detail].toarray()
        cell_values = {f: dense[:, j] for j, f in enumerate(detail)}
    training = read_json(metrics) if metrics and Path(metrics).is_file() else {}
    meta = {"model": acts.model, "layer": acts.layer, "untrained": bool(acts.meta.get("untrained", False))}
    title = title or f"SAE features: {acts.model}, layer {acts.layer}"

    with staged(**outputs) as out:
        if "cells" in out:
            cell_activations.save(out["cells"], cell_matrix, pos, obs_names.size)
        table.to_parquet(out["features"], index=False)
        genes.to_parquet(out["genes"], index=False)
        (group_df if group_df is not None else empty_groups()).to_parquet(out["groups"], index=False)
        factor_df.to_parquet(out["factors"], index=False)
        dashboard.render(out["dashboard"], title, meta, training, table, genes, group_df, detail, cell_values,
                         coords[pos] if coords is not None else None, histograms, loss_curve)
    log.info("%d live features of %d; %d in the dashboard", live.size, d_sae, len(detail))


def read_preprocessed(path: str):
    """obs names, groups (or None), coordinates (or None), an Ensembl id -> symbol map, the recorded spatial graph
    and section codes (or None), without loading X."""
    import pandas as pd

    from tissuelens.io import read_h5ad

    adata = read_h5ad(path, backed=True)
    try:
        obs_names = adata.obs_names.astype(str).to_numpy()
        groups = None
        if "group" in adata.obs:
            groups = pd.Categorical(adata.obs["group"].astype("category"))
        coords = graph = sections = None
        if "spatial" in adata.obsm:
            import numpy as np

            from tissuelens.spatial_graph import GRAPH_RECORD, section_labels, spatial_connectivities

            coords = np.asarray(adata.obsm["spatial"], dtype=float)[:, :2]
            if GRAPH_RECORD in adata.uns:  # the recorded per-section graph (files from before it: a kNN graph)
                graph = spatial_connectivities(adata, path)
                labels = section_labels(adata)
                sections = None if labels is None else np.asarray(labels.codes)
        if "gene_ids" in adata.var:
            symbols = dict(zip(adata.var["gene_ids"].astype(str), adata.var_names.astype(str)))
        else:
            symbols = {}
    finally:
        adata.file.close()
    return obs_names, groups, coords, symbols, graph, sections


def empty_groups():
    import numpy as np
    import pandas as pd

    return pd.DataFrame({"feature": np.empty(0, np.int64), "group": pd.Categorical([]),
                         "n_cells": np.empty(0, np.int64), "mean_activation": [], "mean_rest": [],
                         "log2fc": [], "auroc": []})
