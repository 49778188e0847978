"""Spatial domains from each cell's neighbourhood: the means of the expression PCs over each of CellCharter's
hops (Varrone et al. 2024: the cells exactly 1, 2, ..., n_hops steps away on the recorded spatial graph, which
is per section, so no mean reaches into another section), side by side as CellCharter concatenates its layers,
mixed with the cell's own PCs by BANKSY's weight λ (Singhal et al. 2024), reduced by PCA and clustered by a
Gaussian mixture (CellCharter's clustering) with one covariance shared by all domains, so cells on a border (a
mix of two domains) do not make a domain of their own. Written here from the papers' descriptions.

The neighbourhood alone (λ = 1, the default) finds the domains and their number without letting a cell's own
non-spatial programme make a domain, but it cannot place a border more finely than a hop. So the domains are
then refined: the mixture, with their number fixed and started at their means, is fitted once more to
CellCharter's full layers (the cell's own PCs beside each hop's mean, equal weights), where a cell's own
expression decides on which side of a border it lies.

The number of domains, when not set, is the most stable one (clustering stability, Lange et al. 2004): for
each K in 2..max_domains the mixture is fitted from several seeds, and K scores the mean ARI between those
fits; a real partition is found again from any start, a split of one domain lands differently each time.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from tissuelens.errors import InputError

log = logging.getLogger(__name__)


def hop_means(x: np.ndarray, graph: sp.spmatrix, n_hops: int) -> list[np.ndarray]:
    """Mean of x over the cells at graph distance exactly 1, ..., n_hops. A cell with no cell at distance k
    (a small island) gets its own row for that hop."""
    adj = sp.csr_matrix(graph, dtype=np.float64)
    adj.setdiag(0)
    adj.eliminate_zeros()
    adj.data[:] = 1.0
    visited = (adj + sp.identity(adj.shape[0], format="csr")).astype(bool).tocsr()
    frontier = adj.astype(bool).tocsr()
    means = []
    for hop in range(1, n_hops + 1):
        if hop > 1:
            reach = (frontier.astype(np.float64) @ adj).astype(bool).tocsr()
            frontier = (reach > visited).tocsr()  # reached now, never before
            visited = (visited + frontier).astype(bool).tocsr()
        size = np.asarray(frontier.sum(axis=1)).ravel()
        mean = np.asarray(frontier.astype(np.float64) @ x) / np.maximum(size, 1)[:, None]
        mean[size == 0] = x[size == 0]
        means.append(mean)
    return means


def niche_features(pcs: np.ndarray, graph: sp.spmatrix, settings: dict, seed: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(the features that find the domains: λ = settings["lambda"], those that refine them: CellCharter's layers,
    each weighted alike, λ = n/(n+1)) of the first settings["niche_pcs"] expression PCs. Hop k is the mean over
    the cells k steps away; the hops are kept apart, not averaged, so a border blurs over one hop's width rather
    than all of them."""
    n_hops, pcs = settings["n_hops"], pcs[:, : settings["niche_pcs"]]
    hops = hop_means(pcs, graph, n_hops)
    return tuple(mixed_features(pcs, hops, lam, settings["cluster_dims"], seed)
                 for lam in (settings["lambda"], n_hops / (n_hops + 1)))


def mixed_features(own: np.ndarray, hops: list[np.ndarray], lam: float, dims: int, seed: int) -> np.ndarray:
    """[√(1-λ)·own, √(λ/n)·hop 1, ..., √(λ/n)·hop n] reduced to `dims` principal components."""
    from sklearn.decomposition import PCA

    n = len(hops)
    mixed = np.hstack(([np.sqrt(1 - lam) * own] if lam < 1 else []) + [np.sqrt(lam / n) * h for h in hops])
    return PCA(int(min(dims, mixed.shape[1], len(own) - 1)), random_state=seed).fit_transform(mixed)


def fit_mixture(features: np.ndarray, k: int, seed: int, n_init: int = 1) -> tuple[np.ndarray, float]:
    """(labels, mean log-likelihood) of a Gaussian mixture with `k` components and one shared (tied) covariance
    (sklearn, k-means start; the best of `n_init` starts)."""
    from sklearn.mixture import GaussianMixture

    model = GaussianMixture(n_components=k, covariance_type="tied", reg_covar=1e-4, n_init=n_init, random_state=seed)
    labels = model.fit_predict(features)
    return labels, float(model.score(features))


def refine(features: np.ndarray, labels: np.ndarray, seed: int, where: str = "domains") -> np.ndarray:
    """The labels of a tied Gaussian mixture on `features` with one component per domain of `labels`, started at
    those domains' means (EM from there, so the domains keep their identity). A fit in which a domain loses every
    cell is not used: `labels` are returned, so the number of domains stays the one chosen."""
    from sklearn.mixture import GaussianMixture

    present = np.unique(labels)
    means = np.vstack([features[labels == c].mean(axis=0) for c in present])
    model = GaussianMixture(n_components=len(present), covariance_type="tied", reg_covar=1e-4, means_init=means,
                            random_state=seed)
    refined = model.fit_predict(features)
    if len(np.unique(refined)) < len(present):
        log.info("%s: refining the spatial domains by each cell's own expression emptied a domain; the "
                 "neighbourhood's domains are kept", where)
        return labels
    return refined


def most_stable(features: np.ndarray, high: int, runs: int, seed: int) -> tuple[int, np.ndarray, dict[int, float]]:
    """(best K, the labels of its most likely fit, {K: mean pairwise ARI of the fits}) over K = 2..high. Ties go
    to the larger K, the finest partition that every seed reproduces: merging two real domains is as stable as
    keeping them. The most likely of the K's fits is kept, as CellCharter keeps its best run."""
    from itertools import combinations

    from sklearn.metrics import adjusted_rand_score

    fits, scores = {}, {}
    for k in range(2, high + 1):
        fits[k] = [fit_mixture(features, k, seed + r) for r in range(runs)]
        scores[k] = float(np.mean([adjusted_rand_score(a, b) for (a, _), (b, _) in combinations(fits[k], 2)]))
    best = max(scores, key=lambda k: (round(scores[k], 6), k))
    return best, max(fits[best], key=lambda fit: fit[1])[0], scores


def niche_domains(pcs: np.ndarray, graph: sp.spmatrix, settings: dict, seed: int, where: str
                  ) -> tuple[np.ndarray, dict]:
    """(domain codes 0..K-1 by decreasing size, a record of the choice). settings: analyze.domains."""
    features, layers = niche_features(pcs, graph, settings, seed)
    n_domains = settings["n_domains"]
    if n_domains == "auto":
        high = min(settings["max_domains"], len(pcs) - 1)
        if high < 2:
            raise InputError(f"{where}: {len(pcs)} cells, too few to choose a number of spatial domains")
        best, labels, scores = most_stable(features, high, settings["stability_runs"], seed)
        record = {"n_domains": best, "chosen_by": "stability", "stability": scores}
    else:
        if not 2 <= n_domains < len(pcs):
            raise InputError(f"{where}: analyze.domains.n_domains={n_domains} needs 2 <= n_domains < {len(pcs)} cells")
        labels = fit_mixture(features, int(n_domains), seed, n_init=settings["stability_runs"])[0]
        record = {"n_domains": int(n_domains), "chosen_by": "config"}
    if settings["refine"]:
        labels = refine(layers, labels, seed, where)
    order = np.argsort(-np.bincount(labels, minlength=labels.max() + 1), kind="stable")
    return np.argsort(order)[labels], record
