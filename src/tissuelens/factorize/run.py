"""The two rule-level steps, callable from scripts and tests: train one variant, analyse one variant."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from tissuelens.io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)


def complete_settings(partial: dict, seed: int) -> dict:
    """Schema defaults < the given settings (rules pass complete ones; by hand a few keys suffice)."""
    from tissuelens.config import deep_merge, step_defaults

    return {**deep_merge(step_defaults("factorize"), partial), "seed": seed}


def checkpoint_path(model_dir: Path) -> Path:
    """Beside the model directory, not inside it: a failed job's outputs are deleted, checkpoints must stay."""
    return Path(model_dir).parent / "checkpoint.pt"


def train_variant(adata, variant: str, settings: dict, model_dir: Path, elbo_csv: Path, where: str) -> dict:
    import torch

    from tissuelens.device import resolve_device
    from tissuelens.factorize.data import load_factor_data
    from tissuelens.factorize.model import build_model
    from tissuelens.factorize.store import save_model
    from tissuelens.factorize.train import Trainer

    torch.manual_seed(settings["seed"])
    data = load_factor_data(adata, settings, variant, settings["seed"], where)
    device = resolve_device(settings["device"])
    log.info("%s: %d cells (%d held out), %d genes, L=%d on %s", variant, data.n_cells, len(data.val_idx),
             data.n_genes, settings["n_factors"], device)
    model = build_model(variant, data, settings)
    trainer = Trainer(model, data, settings, variant, device)
    ckpt = checkpoint_path(model_dir)
    result = trainer.fit(ckpt)
    training = {"iterations": result.iterations, "converged": result.converged, "seconds": result.seconds,
                "final_elbo": result.history[-1] if result.history else None, "clamps": result.clamps,
                "fingerprint": trainer.fingerprint, "device": str(device), "loadings_refit": result.loadings_pass}
    with atomic_path(elbo_csv) as tmp:
        with open(tmp, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["iteration", "elbo"])
            out.writerows((i + 1, repr(v)) for i, v in enumerate(result.history))
    save_model(Path(model_dir), model, variant, data, settings, training)
    ckpt.unlink(missing_ok=True)
    return training


def _save_npy(path: Path, array) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def _save_npz(path: Path, arrays: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def analyse_variant(adata, variant: str, settings: dict, model_dir: Path, elbo_csv: Path, out_dir: Path,
                    where: str) -> dict:
    """Write factors/scales/loadings .npy, metrics.json, gene_enrichment.json, moran_i.csv,
    inducing_points.csv, group_loadings.npz, groupwise_factors.npz and figures/ into `out_dir`."""
    import pandas as pd
    import scipy.sparse as sp

    from tissuelens.factorize import plots
    from tissuelens.factorize.analysis import analyse
    from tissuelens.factorize.data import load_factor_data
    from tissuelens.factorize.store import load_model

    data = load_factor_data(adata, settings, variant, settings["seed"], where)
    model, training = load_model(model_dir, data, settings, variant)
    truth = adata.obsm["true_factors"] if "true_factors" in adata.obsm else None
    res = analyse(model, data, variant, settings, training,
                  None if truth is None else np.asarray(truth, dtype=np.float64), adata.uns.get("true_factors_spatial"))
    out = Path(out_dir)
    _save_npy(out / "factors.npy", res.factors.astype(np.float32))
    _save_npy(out / "scales.npy", res.scales.astype(np.float32))
    _save_npy(out / "loadings.npy", res.loadings.astype(np.float32))
    names = data.group_names
    _save_npz(out / "group_loadings.npz", {} if res.group_loadings is None else
              {n: res.group_loadings[g].astype(np.float32) for g, n in enumerate(names)})
    _save_npz(out / "groupwise_factors.npz", {n: f.astype(np.float32) for n, f in res.groupwise.items()})
    with atomic_path(out / "moran_i.csv") as tmp:
        table = pd.DataFrame({"factor": np.arange(len(res.order)), "original_index": res.order,
                              "moran_i": res.moran if res.moran is not None else np.nan})
        for name, values in res.moran_by_section.items():  # several sections: moran_i is their cell-weighted mean
            table[f"moran_i[{name}]"] = values
        table.to_csv(tmp, index=False)
    with atomic_path(out / "inducing_points.csv") as tmp:
        z = res.inducing if res.inducing is not None else np.zeros((0, 2))
        g = [names[i] for i in res.inducing_groups] if res.inducing_groups is not None else [""] * len(z)
        table = pd.DataFrame({"x": z[:, 0], "y": z[:, 1], "group": g})
        if res.inducing_sections is not None:
            table["section"] = [data.section_names[i] for i in res.inducing_sections]
        table.to_csv(tmp, index=False)
    write_json(res.enrichment, out / "gene_enrichment.json")
    write_json(res.metrics, out / "metrics.json")

    history = pd.read_csv(elbo_csv)["elbo"].to_numpy()
    x = adata.X[:, data.gene_index]
    expr = (lambda d: np.asarray(x[:, d].todense()).ravel()) if sp.issparse(x) else (lambda d: np.asarray(x[:, d]).ravel())
    a = settings["analysis"]
    with atomic_path(out / "figures") as tmp:
        tmp.mkdir()
        plots.elbo_curve(history, tmp / "elbo.png")
        plots.top_genes(res.loadings, data.gene_names, a["top_genes"], tmp / "top_genes.png")
        xy = data.raw_coords
        if xy is not None:  # several sections: drawn side by side (tissuelens.sections.tile_sections)
            from tissuelens.sections import tile_sections

            n_sec = len(data.section_names) or None
            xy = tile_sections(xy, data.sections, n_sec)
            if res.inducing is not None and res.inducing_sections is not None:
                z_all = np.vstack([data.raw_coords, res.inducing])
                s_all = np.concatenate([data.sections, res.inducing_sections])
                res.inducing = tile_sections(z_all, s_all, n_sec)[len(xy):]
            plots.factor_maps(xy, res.factors, res.moran, f"{variant}: factors exp(μ)", tmp / "factors.png")
            plots.factor_maps(xy, res.scales, None, f"{variant}: posterior sd σ", tmp / "scales.png", cmap="cividis")
            plots.groups_and_inducing(xy, data.groups, names, res.inducing, res.inducing_groups, tmp / "groups_inducing.png")
            plots.factors_with_genes(xy, res.factors, res.loadings, expr, data.gene_names, a["plot_factors_max"],
                                     tmp / "factors_top_genes.png")
        if res.lfc is not None:
            plots.enrichment_heatmap(res.lfc, names, tmp / "enrichment_heatmap.png")
            plots.enrichment_by_factor(res.lfc, data.gene_names, names, a["top_genes"], tmp / "enrichment_by_factor.png")
            plots.enrichment_by_group(res.lfc, names, tmp / "enrichment_by_group.png")
    return res.metrics


ANALYSIS_FILES = ("factors.npy", "scales.npy", "loadings.npy", "metrics.json", "gene_enrichment.json", "moran_i.csv",
                  "inducing_points.csv", "group_loadings.npz", "groupwise_factors.npz")


def compare(metrics_files: list[Path], out_csv: Path) -> None:
    from tissuelens.factorize.analysis import comparison_table

    rows = []
    for path in metrics_files:
        rows.append(read_json(path))
    with atomic_path(out_csv) as tmp:
        comparison_table(rows).to_csv(tmp, index=False)
