"""Rule analyze_sae: tie a trained SAE's features to genes, cells, groups, tissue space and PNMF-GP factors.

Reads the SAE (SAELens format) and the activations it was trained on, plus the preprocessed AnnData (groups,
coordinates, gene symbols) and, when given, PNMF-GP factors. Writes features.parquet (one row per feature),
feature_genes.parquet, feature_groups.parquet, feature_factors.parquet (empty without factors) and the
self-contained dashboard.html. Bad input: one `error:` line, exit 2, no outputs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # by hand, without an install

from tissuelens import cli  # noqa: E402

log = logging.getLogger("analyze_sae")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sae", required=True, help="trained SAE directory (SAELens format)")
    p.add_argument("--activations", required=True, help="embed/{model}/activations directory")
    p.add_argument("--preprocessed", required=True, help="preprocessed.h5ad of the dataset")
    p.add_argument("--factors", default=None, help="PNMF-GP factors.npy (cells x factors), optional")
    p.add_argument("--metrics", default=None, help="metrics.json of the training run (dashboard header)")
    p.add_argument("--loss-curve", default=None, help="loss_curve.png to embed in the dashboard")
    p.add_argument("--settings", type=cli.settings_arg, default={}, help="sae step settings (JSON)")
    p.add_argument("--title", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-features", required=True)
    p.add_argument("--out-genes", required=True)
    p.add_argument("--out-groups", required=True)
    p.add_argument("--out-factors", required=True)
    p.add_argument("--out-dashboard", required=True)
    p.add_argument("--out-cell-activations", default=None,
                   help="cells x features sparse .npz aligned with the preprocessed obs (zero rows: cells not exported)")
    return p.parse_args(argv)


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


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import pandas as pd

    from tissuelens.device import resolve_device
    from tissuelens.errors import InputError
    from tissuelens.io import read_json
    from tissuelens.progress import Progress
    from tissuelens.sae.activations import open_activations
    from tissuelens.sae.settings import resolve_settings

    settings = resolve_settings(args.settings)
    sae_cfg_path = Path(args.sae) / "cfg.json"
    if not sae_cfg_path.is_file():
        raise InputError(f"{args.sae}: not a SAELens SAE directory (cfg.json missing)")
    sae_cfg = read_json(sae_cfg_path)
    layer = sae_cfg.get("metadata", {}).get("layer", settings["layer"])
    acts = open_activations(args.activations, layer, settings["include_special_tokens"])
    if int(sae_cfg["d_in"]) != acts.d_in:
        raise InputError(f"{args.sae}: SAE d_in {sae_cfg['d_in']} does not match {acts.path} width {acts.d_in}")
    obs_names, groups, coords, symbols, graph, sections = read_preprocessed(args.preprocessed)
    factors = None
    if args.factors:
        from tissuelens.sae.features import check_factors

        try:
            factors = np.load(args.factors)
        except (OSError, ValueError) as exc:
            raise InputError(f"{args.factors}: not a readable .npy array ({exc})") from None
        factors = check_factors(factors, obs_names.size, args.factors)
    device = str(resolve_device(settings["device"]))

    import torch

    from tissuelens.sae import cell_activations, dashboard, features
    from tissuelens.sae.activations import sequential_batches
    from tissuelens.sae.metrics import encode_decode
    from tissuelens.sae.outputs import staged
    from tissuelens.sae.train import load_sae

    if args.threads:
        torch.set_num_threads(args.threads)
    sae = load_sae(args.sae, device)
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
        raise InputError(f"{acts.directory / 'index.parquet'}: cells {', '.join(missing)} are not in {args.preprocessed}")
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
    metrics = read_json(args.metrics) if args.metrics and Path(args.metrics).is_file() else {}
    meta = {"model": acts.model, "layer": acts.layer, "untrained": bool(acts.meta.get("untrained", False))}
    title = args.title or f"SAE features: {acts.model}, layer {acts.layer}"

    with staged(features=args.out_features, genes=args.out_genes, groups=args.out_groups,
                factors=args.out_factors, dashboard=args.out_dashboard, cells=args.out_cell_activations) as out:
        if "cells" in out:
            cell_activations.save(out["cells"], cell_matrix, pos, obs_names.size)
        table.to_parquet(out["features"], index=False)
        genes.to_parquet(out["genes"], index=False)
        (group_df if group_df is not None else _empty_groups()).to_parquet(out["groups"], index=False)
        factor_df.to_parquet(out["factors"], index=False)
        dashboard.render(out["dashboard"], title, meta, metrics, table, genes, group_df, detail, cell_values,
                         coords[pos] if coords is not None else None, histograms, args.loss_curve)
    log.info("%d live features of %d; %d in the dashboard", live.size, d_sae, len(detail))


def _empty_groups():
    import numpy as np
    import pandas as pd

    return pd.DataFrame({"feature": np.empty(0, np.int64), "group": pd.Categorical([]),
                         "n_cells": np.empty(0, np.int64), "mean_activation": [], "mean_rest": [],
                         "log2fc": [], "auroc": []})


if __name__ == "__main__":
    cli.run(main)
