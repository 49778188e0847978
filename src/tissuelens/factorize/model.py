"""The factor model: a prior over log-factors (one of the five variants) plus non-negative loadings W."""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from tissuelens.factorize.data import FactorData, GROUP_VARIANTS
from tissuelens.factorize.inducing import inducing_count, kmeans_centres, mggp_inducing, split_counts
from tissuelens.factorize.kernels import make_kernel, search_space
from tissuelens.factorize.lcgp import LCGPPrior
from tissuelens.factorize.pnmf import PNMFPrior
from tissuelens.factorize.svgp import SVGPPrior

log = logging.getLogger(__name__)


class FactorModel(nn.Module):
    def __init__(self, prior: nn.Module, w: torch.Tensor, trainable_w: bool):
        super().__init__()
        self.prior = prior
        if trainable_w:
            self.w = nn.Parameter(w.clone())
        else:
            self.register_buffer("w", w.clone())

    @property
    def n_factors(self) -> int:
        return self.w.shape[1]


def initial_lengthscale(settings: dict, points: np.ndarray) -> float:
    """`lengthscale`, or by default twice the median distance between neighbouring inducing inputs (SVGP:
    the k-means centres; LCGP: the training cells), the finest scale they resolve: the kernel starts where
    q can follow it and each factor's learned lengthscale grows to what the data support. NSF starts at 0.1
    of its box of side 4 (0.1 × spatial_scale here), which leaves an SVGP with fewer inducing points than
    cells unable to follow its prior between them, so the fit shrinks the amplitude instead."""
    if settings["lengthscale"]:
        return float(settings["lengthscale"])
    from sklearn.neighbors import NearestNeighbors

    xy = np.unique(np.asarray(points, dtype=np.float64)[:, :2], axis=0)
    if len(xy) < 2:
        return 0.1 * settings["spatial_scale"]
    dist, _ = NearestNeighbors(n_neighbors=2).fit(xy).kneighbors(xy)
    return float(2.0 * np.median(dist[:, 1]))


def lcgp_rank(settings: dict, k: int) -> int:
    """LCGP rank R: `lcgp_rank`, or 2K by default. R must exceed K (see tissuelens.factorize.lcgp)."""
    return settings["lcgp_rank"] or 2 * k


def kernel_inputs(data: FactorData, variant: str, cells=None) -> torch.Tensor | None:
    """Coordinates (plus the group code as a float column for MGGP, then the section code when the data have
    sections) of `cells` (default all)."""
    if data.coords is None:
        return None
    cells = np.arange(data.n_cells) if cells is None else cells
    x = data.coords[cells]
    if variant in GROUP_VARIANTS:
        x = np.column_stack([x, data.groups[cells]])
    if data.sections is not None:
        x = np.column_stack([x, data.sections[cells]])
    return torch.as_tensor(x, dtype=torch.float32)


def initial_values(data: FactorData, settings: dict, gen: torch.Generator):
    """(W (D, L), log-factors (N_train, L)). `random` follows the reference (scaled |N(0,1)|, log-factors
    standardised); `nmf` starts from sklearn's KL-NMF of the training counts, as NSF does."""
    y = data.counts[data.train_idx]
    L = settings["n_factors"]
    if settings["init"] == "nmf":
        from sklearn.decomposition import NMF

        nmf = NMF(L, beta_loss="kullback-leibler", solver="mu", init="nndsvda", max_iter=300,
                  random_state=settings["seed"] % (2**32))
        scaled = y.multiply(1.0 / data.size_factors[data.train_idx][:, None]).tocsr()
        h = nmf.fit_transform(scaled)
        w = nmf.components_.T
        logf = np.log(h + 1e-2 * h.mean(0, keepdims=True) + 1e-8)
    else:
        a = np.sqrt(y.mean() / L)
        w = a * torch.randn(data.n_genes, L, generator=gen, dtype=torch.float64).abs().numpy()
        h = a * torch.randn(y.shape[0], L, generator=gen, dtype=torch.float64).abs().numpy()
        logf = np.log(h)
        logf = (logf - logf.mean(0)) / logf.std(0)
        w = w * h.mean(0) / np.exp(logf).mean(0)
        return torch.as_tensor(w, dtype=torch.float32), torch.as_tensor(logf, dtype=torch.float32)
    shift = logf.mean(0)  # centre log-factors on the prior mean 0; the scale moves into W
    return torch.as_tensor(w * np.exp(shift), dtype=torch.float32), torch.as_tensor(logf - shift, dtype=torch.float32)


def _svgp_init(prior: SVGPPrior, logf, x_train, settings, gen):
    """q(u): mean at each inducing point the average of the initial log-factors of its max(2, ⌈N/M⌉)
    nearest training cells, as NSF initialises it (nmf), or N(0, 1) (random); Cholesky lower-triangular,
    diagonal 0.5 (nmf) or U(0, 1) (random), off-diagonal 0.01·N(0, 1)."""
    z = prior.inducing
    L, m = logf.shape[1], len(z)
    if settings["init"] == "nmf":
        from sklearn.neighbors import KNeighborsRegressor

        k = min(max(2, math.ceil(len(x_train) / m)), len(x_train))
        sectioned = prior.kernel.sectioned  # neighbours of an inducing point within its own section
        u = KNeighborsRegressor(n_neighbors=k).fit(search_space(x_train.numpy(), sectioned), logf.numpy())
        mean = torch.as_tensor(u.predict(search_space(z.numpy(), sectioned)), dtype=torch.float32).T  # (L, M)
        diag = torch.full((L, m), 0.5)
    else:
        mean = torch.randn(L, m, generator=gen)
        diag = torch.rand(L, m, generator=gen)
    chol = 0.01 * torch.randn(L, m, m, generator=gen)
    chol = chol.tril(-1) + torch.diag_embed(diag)
    prior.init_variational(mean, chol)


def build_model(variant: str, data: FactorData, settings: dict, inducing=None) -> FactorModel:
    """A model for the training cells of `data`, initialised per settings. Given `inducing` (M, d) (the
    saved inducing points) it is only a skeleton to load a state_dict into: no k-means, no init."""
    gen = torch.Generator().manual_seed(settings["seed"])
    L, n = settings["n_factors"], len(data.train_idx)
    restoring = inducing is not None
    if restoring:
        w, logf = torch.zeros(data.n_genes, L), torch.zeros(n, L)
    else:
        w, logf = initial_values(data, settings, gen)
    groups = len(data.group_names) if variant in GROUP_VARIANTS else None
    trainable_w = settings["loadings_update"] == "projected"
    if variant == "pnmf":
        return FactorModel(PNMFPrior(L, n, logf, settings["train_kernel"]), w, trainable_w)

    learn_mean = settings["train_kernel"]
    sectioned = data.sections is not None
    x_train = kernel_inputs(data, variant, data.train_idx)
    if variant.endswith("svgp"):
        if not restoring:
            inducing = _select_inducing(variant, data, settings, groups)
        kernel = make_kernel(settings, L, initial_lengthscale(settings, np.asarray(inducing)), groups, sectioned)
        prior = SVGPPrior(torch.as_tensor(inducing, dtype=torch.float32), L, kernel, settings["jitter"], learn_mean)
        prior.set_inputs(x_train)
        if not restoring:
            _svgp_init(prior, logf, x_train, settings, gen)
        return FactorModel(prior, w, trainable_w)

    k = min(settings["n_neighbors"], n - 1)
    if k < settings["n_neighbors"]:
        log.info("n_neighbors=%d clamped to %d (training cells - 1)", settings["n_neighbors"], k)
    rank = lcgp_rank(settings, k)
    kernel = make_kernel(settings, L, initial_lengthscale(settings, x_train.numpy()), groups, sectioned)
    if restoring:
        mean, lu = torch.zeros(L, n), torch.zeros(L, n, rank)
    elif settings["init"] == "nmf":
        mean, lu = logf.T.contiguous(), torch.full((L, n, rank), 0.3 / np.sqrt(rank))
        lu = lu + 0.01 * torch.randn(L, n, rank, generator=gen)
    else:
        mean, lu = torch.randn(L, n, generator=gen), 0.1 * torch.randn(L, n, rank, generator=gen)
    prior = LCGPPrior(x_train, L, k, rank, kernel, settings["jitter"], mean, lu, learn_mean)
    return FactorModel(prior, w, trainable_w)


def _select_inducing(variant, data, settings, groups):
    """k-means inducing points (MGGP: with their group); with sections, each section gets its own, in
    proportion to its training cells (at least one), and carries its section code in the last column."""
    from tissuelens.device import resolve_device

    xy = data.coords[data.train_idx]
    sections = None if data.sections is None else data.sections[data.train_idx]
    places = xy if sections is None else np.column_stack([xy, sections])  # one spot in two sections: two places
    m = inducing_count(settings["n_inducing"], len(np.unique(places, axis=0)), resolve_device(settings["device"]).type)
    if groups is not None and m > len(xy):
        log.info("n_inducing=%d clamped to the %d training cells", m, len(xy))
        m = len(xy)
    if sections is None:
        return _inducing_of(xy, data.groups[data.train_idx] if groups is not None else None, groups, m, settings)
    sizes = np.bincount(sections, minlength=len(data.section_names))
    present = np.flatnonzero(sizes)
    per = np.zeros(len(sizes), dtype=int)
    per[present] = split_counts(sizes[present], max(m, len(present)), "proportional")
    parts = []
    for s in present:
        rows = sections == s
        g = data.groups[data.train_idx][rows] if groups is not None else None
        z = _inducing_of(xy[rows], g, groups, int(per[s]), settings)
        parts.append(np.column_stack([z, np.full(len(z), s)]))
    return np.concatenate(parts)


def _inducing_of(xy, groups_of_cells, groups, m, settings):
    """Inducing points of one set of cells; MGGP: among the groups these cells hold (a section may lack some)."""
    if groups is None:
        return kmeans_centres(xy, m, settings["seed"], settings["kmeans_n_init"])
    present, local = np.unique(groups_of_cells, return_inverse=True)
    z, gz = mggp_inducing(xy, local, len(present), m, settings["inducing_allocation"],
                          settings["seed"], settings["kmeans_n_init"])
    return np.column_stack([z, present[gz]])
