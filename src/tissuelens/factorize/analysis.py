"""Analysis of one trained variant: factors and scales at every cell, Moran order, deviance,
reconstruction, per-group loadings and enrichment, recovery of known factors, comparison table."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from tissuelens.factorize import metrics
from tissuelens.factorize.data import FactorData, GROUP_VARIANTS
from tissuelens.factorize.model import FactorModel
from tissuelens.factorize.store import inducing_of
from tissuelens.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class Analysis:
    factors: np.ndarray  # (N, L) exp(μ), Moran order
    scales: np.ndarray  # (N, L) σ
    loadings: np.ndarray  # (D, L)
    order: np.ndarray  # original factor index of each column
    moran: np.ndarray | None
    metrics: dict
    enrichment: dict
    lfc: np.ndarray | None  # (G, D, L)
    group_loadings: np.ndarray | None  # (G, D, L)
    groupwise: dict = field(default_factory=dict)  # group name -> (N, L) exp-space (MGGP only)
    inducing: np.ndarray | None = None  # (M, 2) raw coordinate units
    inducing_groups: np.ndarray | None = None
    moran_by_section: dict = field(default_factory=dict)  # section -> (L,) Moran's I, Moran order (several sections)
    inducing_sections: np.ndarray | None = None


def to_raw_units(z: np.ndarray, data: FactorData) -> np.ndarray:
    """Map model-unit coordinates back to obsm['spatial'] units (the rescale is affine per axis)."""
    raw, model = data.raw_coords, data.coords
    span_raw, span_model = np.ptp(raw, axis=0), np.ptp(model, axis=0)
    return (z - model.min(0)) * (span_raw / span_model) + raw.min(0)


def recovery(true_factors: np.ndarray, true_spatial, factors: np.ndarray, mu: np.ndarray, train, val) -> dict:
    """Best-matched Pearson of the true factors with the estimates on the training cells, as NSF's
    benchmark scores it (a held-out cell of `pnmf` only has the prior, so it says nothing of recovery);
    the GP variants' held-out cells are scored apart (`pearson_spatial_val`: interpolation)."""
    spatial = np.ones(true_factors.shape[1], bool) if true_spatial is None else np.asarray(true_spatial, bool)
    truth, truth_sp = true_factors[train], true_factors[train][:, spatial]
    r_sp = metrics.best_matched_pearson(truth_sp, factors[train])
    out = {"spatial_mean": float(np.nanmean(r_sp)), "spatial_min": float(np.nanmin(r_sp)), "pearson_spatial": r_sp.tolist(),
           "pearson_all": metrics.best_matched_pearson(truth, factors[train]).tolist(),
           # exp-space is the faithful comparison (factors.npy = e^μ against the true e^F; the rate is linear
           # in them); log-space weighs near-zero regions the data barely constrain equally, and needs
           # positive truth (the patterned simulations' factors are 0/1)
           "pearson_spatial_log": (metrics.best_matched_pearson(np.log(truth_sp), mu[train]).tolist()
                                   if (truth_sp > 0).all() else None)}
    if len(val) > 2:
        out["pearson_spatial_val"] = metrics.best_matched_pearson(true_factors[val][:, spatial], factors[val]).tolist()
    return out


def analyse(model: FactorModel, data: FactorData, variant: str, settings: dict, training: dict,
            true_factors: np.ndarray | None = None, true_spatial=None) -> Analysis:
    a = settings["analysis"]
    chunk = settings["chunk_size"]
    # one line per step, with the ETA of the rest (a 100,000-cell analysis runs for minutes)
    steps = Progress(3 + (data.groups is not None) + (variant in GROUP_VARIANTS), f"analyze {variant}", unit="steps",
                     logger=log, every=0)
    mu, var = metrics.posterior(model, data, variant, chunk)
    steps.update(1, "posterior")
    w = model.w.detach().cpu().numpy().astype(np.float64)
    moran = None
    order = np.arange(w.shape[1])
    if data.raw_coords is not None:
        if data.sections is None:
            moran = metrics.morans_i(np.exp(mu), data.raw_coords, a["moran_neighbors"], data.graph)
        else:  # per section, on each section's own graph; the order follows their cell-weighted mean
            moran, by_section = metrics.morans_i_by_section(np.exp(mu), data.raw_coords, data.sections,
                                                            data.section_names, data.graph, a["moran_neighbors"])
        order = np.argsort(-moran, kind="stable")
        moran = moran[order]
        by_section = {k: v[order] for k, v in by_section.items()} if data.sections is not None else {}
    mu, var, w = mu[:, order], var[:, order], w[:, order]
    factors, scales = np.exp(mu), np.sqrt(var)
    rate_f = factors if a["rate"] == "median" else np.exp(mu + var / 2)

    nu = data.size_factors
    tr, va = data.train_idx, data.val_idx
    dev_tr = metrics.deviance(data.counts[tr], rate_f[tr], w, nu[tr], chunk)
    dev_va = metrics.deviance(data.counts[va], rate_f[va], w, nu[va], chunk) if len(va) else None
    steps.update(1, "Moran's I and deviance")
    m = {
        "variant": variant,
        "n_cells": data.n_cells, "n_train": len(tr), "n_val": len(va), "n_genes": data.n_genes,
        "n_factors": int(w.shape[1]), "n_inducing": int(len(inducing_of(model))),
        "iterations": training.get("iterations"), "converged": training.get("converged"),
        "training_seconds": training.get("seconds"), "final_elbo": training.get("final_elbo"),
        "factor_order": order.tolist(),
        "moran_i": None if moran is None else moran.tolist(),
        "moran_i_mean": None if moran is None else float(moran.mean()),
        "train_deviance": dev_tr["mean"],
        "val_deviance": None if dev_va is None else dev_va["mean"],
        "train_nsf_deviance": dev_tr["nsf"],
        "val_nsf_deviance": None if dev_va is None else dev_va["nsf"],
        "deviance": {"train": dev_tr, "val": dev_va, "rate": a["rate"],
                     "convention": "mean = 2*sum(dev)/(cells*genes); gene_* = per-gene mean unit deviance over "
                                   "cells, no factor 2; nsf = NSF's dev_*_mean"},
        "hyperparameters": hyperparameters(model, order),
        "reconstruction_error": metrics.reconstruction_error(data.counts, factors, w, chunk),
        "loadings_sparsity": float((w < 1e-6).mean()),
    }
    steps.update(1, "reconstruction error")

    lfc = group_w = None
    enrichment = {}
    if data.groups is not None:
        g = len(data.group_names)
        m["reconstruction_error_by_group"] = {
            name: metrics.reconstruction_error(data.counts[data.groups == i], factors[data.groups == i], w, chunk)
            for i, name in enumerate(data.group_names)}
        group_w = metrics.group_loadings(data.counts, factors, w, data.groups, g, a["group_loadings_max_iter"],
                                         settings["seed"])
        lfc = metrics.enrichment_lfc(w, group_w)
        enrichment = metrics.enrichment_summary(lfc, data.gene_names, data.group_names, a["top_genes"])
        steps.update(1, "group loadings")

    if true_factors is not None:
        m["recovery"] = recovery(true_factors, true_spatial, factors, mu, tr, va)

    groupwise = {}
    if variant in GROUP_VARIANTS:
        for i, name in enumerate(data.group_names):
            gmu, _ = metrics.posterior(model, data, variant, chunk, groups=np.full(data.n_cells, i))
            groupwise[name] = np.exp(gmu[:, order])
        steps.update(1, "groupwise posteriors")

    z = inducing_of(model).numpy().astype(np.float64)
    inducing = inducing_groups = inducing_sections = None
    if len(z) and data.raw_coords is not None:
        inducing = to_raw_units(z[:, :2], data)
        inducing_groups = z[:, 2].round().astype(int) if variant in GROUP_VARIANTS else None
        if data.sections is not None:
            inducing_sections = z[:, -1].round().astype(int)
    return Analysis(factors, scales, w, order, moran, m, enrichment, lfc, group_w, groupwise, inducing, inducing_groups,
                    by_section if data.raw_coords is not None else {}, inducing_sections)


def hyperparameters(model: FactorModel, order: np.ndarray) -> dict:
    """The prior's learned (or fixed) hyperparameters per factor, in the Moran order of the outputs."""
    from tissuelens.factorize.kernels import FactorKernel

    prior, out = model.prior, {}
    kernel = next((m for m in prior.modules() if isinstance(m, FactorKernel)), None)
    with torch.no_grad():
        if kernel is not None:
            out["lengthscale"] = kernel.lengthscales.cpu().numpy()[order].tolist()
            out["amplitude"] = kernel.amplitudes.cpu().numpy()[order].tolist()
            if kernel.n_groups is not None:
                out["group_diff"] = float(kernel.group_diff)
        mean = getattr(prior, "prior_mean", None)
        if mean is None and hasattr(prior, "mean_module"):
            mean = prior.mean_module.constant
        if mean is None and hasattr(prior, "prior_loc"):
            mean = prior.prior_loc
            out["prior_scale"] = prior.prior_scale.cpu().numpy()[order].tolist()
        if mean is not None:
            out["mean"] = mean.detach().cpu().numpy()[order].tolist()
    return out


COMPARISON_COLUMNS = ["variant", "val_deviance", "val_nsf_deviance", "train_deviance", "reconstruction_error", "moran_i_mean",
                      "recovery_spatial_mean", "recovery_spatial_min", "iterations", "converged", "training_seconds",
                      "n_factors", "n_inducing"]


def comparison_table(all_metrics: list[dict]):
    import pandas as pd

    rows = []
    for m in all_metrics:
        rec = m.get("recovery") or {}
        rows.append({**{k: m.get(k) for k in COMPARISON_COLUMNS},
                     "recovery_spatial_mean": rec.get("spatial_mean"), "recovery_spatial_min": rec.get("spatial_min")})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
