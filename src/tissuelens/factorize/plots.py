"""PNG figures of one analysed variant (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _grid(n: int, ncols: int = 5, size: float = 2.6):
    ncols = min(ncols, n)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def _spatial(ax, xy, values, title, cmap="viridis", s=None):
    s = s or max(2.0, 3000.0 / len(xy))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=values, s=s, cmap=cmap, linewidths=0)
    ax.set_title(title, fontsize=8)
    ax.set_aspect("equal")
    ax.invert_yaxis()  # image convention, as squidpy
    ax.set_xticks([]), ax.set_yticks([])
    return sc


def _save(fig, path: Path):
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def factor_maps(xy, values, moran, title: str, path: Path, cmap="viridis"):
    fig, axes = _grid(values.shape[1])
    for l, ax in enumerate(axes):
        if l >= values.shape[1]:
            break
        label = f"factor {l}" + ("" if moran is None else f" (I={moran[l]:.2f})")
        fig.colorbar(_spatial(ax, xy, values[:, l], label, cmap), ax=ax, shrink=0.7)
    fig.suptitle(title, fontsize=10)
    _save(fig, path)


def groups_and_inducing(xy, groups, group_names, z, zgroups, path: Path):
    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = plt.get_cmap("tab20")
    if groups is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=4, c="lightgrey", label="cells")
    else:
        for g, name in enumerate(group_names):
            sel = groups == g
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, color=cmap(g % 20), label=name, alpha=0.6)
    if z is not None:
        colors = "black" if zgroups is None else [cmap(g % 20) for g in zgroups]
        ax.scatter(z[:, 0], z[:, 1], s=14, c=colors, marker="x", linewidths=0.8, label="inducing points")
    ax.set_aspect("equal"), ax.invert_yaxis()
    ax.legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    ax.set_title("cells by group and inducing points", fontsize=10)
    _save(fig, path)


def elbo_curve(history, path: Path):
    fig, ax = plt.subplots(figsize=(6, 3.5))
    h = np.asarray(history)
    ax.plot(np.arange(1, len(h) + 1), h, lw=0.6, color="grey", label="ELBO")
    if len(h) >= 20:
        k = max(len(h) // 50, 5)
        ax.plot(np.arange(k, len(h) + 1), np.convolve(h, np.ones(k) / k, "valid"), lw=1.5, label=f"mean of {k}")
    lo = np.percentile(h, 5) if len(h) > 20 else h.min()
    ax.set_ylim(lo, h.max() + 0.05 * (h.max() - lo + 1))
    ax.set_xlabel("iteration"), ax.set_ylabel("ELBO"), ax.legend(fontsize=7)
    _save(fig, path)


def top_genes(loadings, genes, top: int, path: Path):
    fig, axes = _grid(loadings.shape[1], size=2.8)
    for l, ax in enumerate(axes):
        if l >= loadings.shape[1]:
            break
        order = np.argsort(-loadings[:, l])[:top]
        ax.barh(np.arange(len(order))[::-1], loadings[order, l], color="tab:blue")
        ax.set_yticks(np.arange(len(order))[::-1], [genes[i] for i in order], fontsize=6)
        ax.set_title(f"factor {l}", fontsize=8)
    _save(fig, path)


def factors_with_genes(xy, factors, loadings, expr, genes, n_factors: int, path: Path, n_genes: int = 3):
    """Each row: a factor's map beside the log-expression of its top genes."""
    n = min(n_factors, factors.shape[1])
    fig, axes = plt.subplots(n, n_genes + 1, figsize=(2.4 * (n_genes + 1), 2.4 * n), squeeze=False)
    for l in range(n):
        _spatial(axes[l, 0], xy, factors[:, l], f"factor {l}")
        for j, d in enumerate(np.argsort(-loadings[:, l])[:n_genes]):
            _spatial(axes[l, j + 1], xy, expr(d), genes[d], cmap="magma")
    _save(fig, path)


def enrichment_heatmap(lfc, group_names, path: Path):
    """Mean LFC over genes of each (factor, group)."""
    mean = lfc.mean(axis=1)  # (G, L)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * mean.shape[1], 1 + 0.35 * mean.shape[0]))
    lim = np.abs(mean).max() + 1e-9
    im = ax.imshow(mean, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(mean.shape[1]), [f"f{l}" for l in range(mean.shape[1])], fontsize=7)
    ax.set_yticks(range(len(group_names)), group_names, fontsize=7)
    fig.colorbar(im, ax=ax, label="mean log2 FC")
    _save(fig, path)


def enrichment_by_factor(lfc, genes, group_names, top: int, path: Path):
    """Per factor: the genes most enriched in any group, their LFC in every group."""
    fig, axes = _grid(lfc.shape[2], ncols=4, size=3.2)
    for l, ax in enumerate(axes):
        if l >= lfc.shape[2]:
            break
        pick = np.argsort(-np.abs(lfc[:, :, l]).max(0))[:top]
        im = ax.imshow(lfc[:, pick, l].T, cmap="RdBu_r", vmin=-3, vmax=3, aspect="auto")
        ax.set_yticks(range(len(pick)), [genes[i] for i in pick], fontsize=5)
        ax.set_xticks(range(len(group_names)), group_names, fontsize=5, rotation=90)
        ax.set_title(f"factor {l}", fontsize=8)
    fig.colorbar(im, ax=axes[: lfc.shape[2]], label="log2 FC", shrink=0.6)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def enrichment_by_group(lfc, group_names, path: Path):
    """Per group: mean ± sd of the LFC over genes for each factor."""
    fig, axes = _grid(lfc.shape[0], ncols=4, size=2.8)
    for g, ax in enumerate(axes):
        if g >= lfc.shape[0]:
            break
        mean, sd = lfc[g].mean(0), lfc[g].std(0)
        ax.bar(range(len(mean)), mean, yerr=sd, color=np.where(mean > 0, "tab:red", "tab:blue"))
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xticks(range(len(mean)), [f"f{l}" for l in range(len(mean))], fontsize=6)
        ax.set_title(group_names[g], fontsize=8)
    _save(fig, path)
