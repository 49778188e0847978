"""Inducing points: k-means centres of the coordinates; for MGGP each centre also carries a group."""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

# n_inducing "auto", per device: (every distinct location up to this many, else this many k-means centres).
# An SVGP step costs about L·M³ (the factorisations) + L·M²·batch (the cross-covariances); these keep a
# step of L = 10 near a second on 2 CPU cores or one GPU.
AUTO_INDUCING = {"cpu": (1500, 1000), "cuda": (6000, 4000)}


def inducing_count(setting, n_distinct: int, device_type: str) -> int:
    """M for `n_inducing` (an integer, or "auto", logged); kmeans_centres clamps it to the distinct locations."""
    if setting == "auto":
        every, centres = AUTO_INDUCING["cuda" if device_type == "cuda" else "cpu"]
        m = n_distinct if n_distinct <= every else centres
        log.info("n_inducing auto on %s: %s (%d distinct training locations)", device_type,
                 "every location" if m == n_distinct else f"{m} k-means centres", n_distinct)
        return m
    return int(setting)


def kmeans_centres(xy: np.ndarray, m: int, seed: int, n_init: int) -> np.ndarray:
    """M k-means centres; all unique locations when M reaches their number (clamped, logged)."""
    unique = np.unique(xy, axis=0)
    if m >= len(unique):
        if m > len(unique):
            log.info("n_inducing=%d clamped to the %d distinct training locations", m, len(unique))
        return unique.copy()
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=m, n_init=n_init, random_state=seed).fit(xy).cluster_centers_


def split_counts(sizes: np.ndarray, m: int, mode: str) -> np.ndarray:
    """Per-group numbers of inducing points summing to m (largest remainder), at least 1, at most the size."""
    share = sizes / sizes.sum() if mode == "proportional" else np.full(len(sizes), 1.0 / len(sizes))
    raw = share * m
    out = np.floor(raw).astype(int)
    out[np.argsort(raw - out)[::-1][: m - out.sum()]] += 1
    return np.clip(out, 1, sizes)


def mggp_inducing(xy, groups, n_groups: int, m: int, allocation: str, seed: int, n_init: int):
    """(Z, groupsZ). `derived`: k-means on all cells, group by a distance-weighted 5-NN vote, then a
    group with no centre takes one centre from the group holding the most (a random one of its centres)
    and is given a random cell of its own. `proportional` / `equal`: k-means within each group."""
    rng = np.random.default_rng(seed)
    if allocation == "derived":
        from sklearn.neighbors import KNeighborsClassifier

        z = kmeans_centres(xy, m, seed, n_init)
        clf = KNeighborsClassifier(n_neighbors=min(5, len(xy)), weights="distance").fit(xy, groups)
        gz = clf.predict(z).astype(np.int64)
        for g in range(n_groups):
            if (gz == g).any():
                continue
            donor = np.bincount(gz, minlength=n_groups).argmax()
            slot = rng.choice(np.flatnonzero(gz == donor))
            z[slot], gz[slot] = xy[rng.choice(np.flatnonzero(groups == g))], g
        return z, gz
    sizes = np.bincount(groups, minlength=n_groups)
    per = split_counts(sizes, m, allocation)
    zs, gs = [], []
    for g in range(n_groups):
        zg = kmeans_centres(xy[groups == g], int(per[g]), seed, n_init)
        zs.append(zg)
        gs.append(np.full(len(zg), g, dtype=np.int64))
    return np.concatenate(zs), np.concatenate(gs)
