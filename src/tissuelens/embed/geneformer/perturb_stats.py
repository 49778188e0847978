"""Statistics over in-silico perturbation results (InSilicoPerturberStats' definitions, our implementation).

Per perturbed gene set and type, the per-cell value is the shift toward the goal state when a goal
group is set, otherwise the cell cosine similarity (upstream's `cell_emb` entries).

* `goal_state_shift`: shift_to_goal = mean shift; p = Wilcoxon rank-sum (scipy `ranksums`) of the
  background against the set's shifts; BH FDR per type; `significant` = FDR < 0.05; sorted by
  significance, shift (descending), FDR. The background (`background_pool`) is upstream's: the shifts of
  every gene perturbed one at a time in the start-state cells (`all_genes`; upstream's
  genes_to_perturb="all" run, pooled in token order, down-sampled to 100,000 with Python's
  random.seed(42) as upstream), or, where upstream has no test (gene sets), the shifts of random gene
  sets of the tested set's size (`random_genes`, pooled over the tested sets of that size and type).
* `vs_null`: the same perturbations in a null group's cells; test - null mean, rank-sum p (NaN -> 1),
  BH FDR; sorted by significance, difference (descending), FDR.
* `mixture_model`: a two-component Gaussian mixture (scikit-learn, random_state 0) fitted to the mean
  score of every perturbation of that type (every gene perturbed on its own with `all_genes`, else the
  tested sets); each set's mean and each of its cells is put in the impact component (lower mean) or not
  by upstream's get_impact_component rule; `impact_component`, `impact_component_percent`; sorted by
  impact, then mean (ascending).
* `aggregate_gene_shifts`: means, standard deviations and counts, most affected (lowest cosine) first;
  the affected-gene rows are perturbation_genes.parquet.

Always kept: the first random gene set of each cell as a control (`control_*` columns) and a Mann-Whitney
test of the set against it (`control_pvalue`, `control_fdr`). `combos` rows (anchor gene + set) add
upstream's combination columns: anchor shift, test shift, their sum 1 - ((1 - a) + (1 - t)), the combo
shift and combo - sum.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd

STATS = ("goal_state_shift", "vs_null", "mixture_model", "aggregate_gene_shifts")
BACKGROUNDS = ("random_genes", "all_genes")
SIG_FDR = 0.05
MAX_BACKGROUND = 100_000  # upstream's down-sampling of the random distribution, for the speed of ranksums


def bh_fdr(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN kept NaN)."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        from scipy.stats import false_discovery_control

        out[ok] = false_discovery_control(p[ok], method="bh")
    return out


def _value(t: pd.DataFrame, goal: bool, prefix: str = "") -> pd.Series:
    return t[f"{prefix}shift" if goal else f"{prefix}cos_sim"]


def _ranksums(a, b, nan_to_one=False) -> float:
    from scipy.stats import ranksums

    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    p = ranksums(a, b).pvalue if a.size and b.size else np.nan
    return 1.0 if nan_to_one and not np.isfinite(p) else float(p)


def background_pool(background: pd.DataFrame, kind: str, size: int, how: str, goal: bool) -> np.ndarray:
    """The values a set of `size` genes perturbed by `kind` is compared with (rows in the caller's order:
    token then cell for all_genes, as upstream's megalist), at most 100,000 of them drawn as upstream."""
    b = background[background["perturbation"] == kind]
    if how == "random_genes":
        b = b[b["size"] == size]
    pool = _value(b, goal).tolist()
    if len(pool) > MAX_BACKGROUND:
        pool = random.Random(42).sample(pool, k=MAX_BACKGROUND)  # = random.seed(42); random.sample(...)
    return np.asarray(pool, dtype=float)


def fit_mixture(means):
    """Two Gaussian components fitted to the perturbations' mean scores, as upstream (random_state 0)."""
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(n_components=2, random_state=0).fit(np.asarray(means, dtype=float).reshape(-1, 1))


def impact_component(values, gm) -> np.ndarray:
    """Upstream's get_impact_component for each value: 1 = in the impact component (the lower-mean one;
    upstream takes component 0 as the impact one whatever its mean), 0 = not. Above the non-impact mean: 0;
    below the impact mean: 1; between: the mixture's prediction."""
    v = np.asarray(values, dtype=float).reshape(-1)
    means = gm.means_[:, 0]
    impact = int(np.argmin(means))
    lo, hi = means[impact], means[1 - impact]
    out = (gm.predict(v.reshape(-1, 1)) == impact).astype(int) if v.size else np.zeros(0, dtype=int)
    return np.where(v > hi, 0, np.where(v < lo, 1, out))


def summarise(cells: pd.DataFrame, mode: str, goal: bool, null: pd.DataFrame | None = None,
              background: pd.DataFrame | None = None, background_kind: str = "random_genes") -> pd.DataFrame:
    """One row per (perturbed set, type): effect summaries, the `mode` test, the random-gene control test.
    `background` (goal_state_shift): rows with perturbation, size (genes per set) and the per-cell values."""
    from scipy.stats import mannwhitneyu

    if mode == "goal_state_shift" and (background is None or not len(background)):
        raise ValueError("goal_state_shift needs a background (random gene sets or every gene perturbed)")
    rows, per_cell = [], []
    for (label, kind), t in cells.groupby(["perturbed", "perturbation"], sort=False):
        v, c = _value(t, goal).dropna(), _value(t, goal, "control_").dropna()
        per_cell.append(v.to_numpy())
        row = {
            "perturbed": label,
            "genes": t["genes"].iloc[0],
            "symbols": t["symbols"].iloc[0],
            "perturbation": kind,
            "n_cells": len(t),
            "cos_sim_mean": t["cos_sim"].mean(),
            "cos_sim_std": t["cos_sim"].std(ddof=0),
            "cos_sim_median": t["cos_sim"].median(),
            "shift_mean": t["shift"].mean(),
            "control_cos_sim_mean": t["control_cos_sim"].mean(),
            "control_shift_mean": t["control_shift"].mean(),
            "control_pvalue": mannwhitneyu(v, c, alternative="two-sided").pvalue if len(v) >= 2 and len(c) >= 2 else np.nan,
        }
        if mode == "goal_state_shift":
            size = len(str(t["genes"].iloc[0]).split(";"))
            pool = background_pool(background, kind, size, background_kind, goal)
            row.update(background=background_kind, n_background=int(pool.size),
                       background_mean=float(pool.mean()) if pool.size else np.nan)
            row["pvalue"] = _ranksums(pool, v)
        elif mode == "vs_null":
            n = _value(null[(null["perturbed"] == label) & (null["perturbation"] == kind)], goal).dropna()
            row.update(n_cells_null=len(n), null_mean=n.mean() if len(n) else np.nan)
            row["test_vs_null_mean"] = v.mean() - row["null_mean"]
            row["pvalue"] = _ranksums(v, n, nan_to_one=True)
        rows.append(row)
    out = pd.DataFrame(rows)
    if not len(out):
        return out
    out["control_fdr"] = bh_fdr(out["control_pvalue"])
    out["stats"] = mode
    if mode == "mixture_model":
        return _mixture(out, per_cell, goal, background, background_kind)
    if mode == "aggregate_gene_shifts":
        return out.sort_values(["perturbation", "cos_sim_mean"], kind="stable").reset_index(drop=True)
    out["fdr"] = np.nan
    for kind, idx in out.groupby("perturbation").groups.items():  # one upstream run per perturbation type
        out.loc[idx, "fdr"] = bh_fdr(out.loc[idx, "pvalue"])
    out["significant"] = out["fdr"] < SIG_FDR
    by = "shift_mean" if mode == "goal_state_shift" else "test_vs_null_mean"
    return out.sort_values(["perturbation", "significant", by, "fdr"], ascending=[True, False, False, True],
                           kind="stable").reset_index(drop=True)


def _mixture(out: pd.DataFrame, per_cell: list, goal: bool, background, background_kind: str) -> pd.DataFrame:
    """mixture_model columns, one fit per perturbation type."""
    col = "shift_mean" if goal else "cos_sim_mean"
    out["impact_component"], out["impact_component_percent"] = 0, np.nan
    for kind, idx in out.groupby("perturbation").groups.items():
        if background is not None and background_kind == "all_genes" and len(background):
            b = background[background["perturbation"] == kind]
            fit_on = _value(b, goal).groupby(b["perturbed"], sort=False).mean().to_numpy()
        else:
            fit_on = out.loc[idx, col].to_numpy()
        fit_on = fit_on[np.isfinite(fit_on)]
        if fit_on.size < 2:
            raise ValueError("mixture_model fits two components: it needs at least two perturbations of each type")
        gm = fit_mixture(fit_on)
        for i in idx:
            out.loc[i, "impact_component"] = int(impact_component([out.loc[i, col]], gm)[0])
            cellwise = per_cell[i]
            out.loc[i, "impact_component_percent"] = float(impact_component(cellwise, gm).mean() * 100) if len(cellwise) else np.nan
        out.loc[idx, "n_fitted"] = int(fit_on.size)
    return out.sort_values(["perturbation", "impact_component", col], ascending=[True, False, True],
                           kind="stable").reset_index(drop=True)


def combo_columns(summary: pd.DataFrame, cells: pd.DataFrame, anchor_label: str) -> pd.DataFrame:
    """Upstream's combination columns on the anchor+set rows (per-cell values joined on the cell)."""
    out = summary.copy()
    for col in ("anchor_shift", "test_shift", "sum_of_indiv_shifts", "combo_shift", "combo_minus_sum_shift"):
        out[col] = np.nan
    key = ["cell", "perturbation"]
    anchor = cells[cells["perturbed"] == anchor_label][key + ["cos_sim"]].rename(columns={"cos_sim": "a"})
    for i, r in out.iterrows():
        if r["perturbed"] == anchor_label or not r["perturbed"].startswith(anchor_label + "+"):
            continue
        single = r["perturbed"][len(anchor_label) + 1 :]
        combo = cells[(cells["perturbed"] == r["perturbed"]) & (cells["perturbation"] == r["perturbation"])]
        test = cells[(cells["perturbed"] == single)][key + ["cos_sim"]].rename(columns={"cos_sim": "t"})
        m = combo[key + ["cos_sim"]].merge(anchor, on=key).merge(test, on=key)
        if not len(m):
            continue
        indiv = 1 - ((1 - m["a"]) + (1 - m["t"]))
        out.loc[i, ["anchor_shift", "test_shift", "sum_of_indiv_shifts", "combo_shift", "combo_minus_sum_shift"]] = [
            m["a"].mean(), m["t"].mean(), indiv.mean(), m["cos_sim"].mean(), (m["cos_sim"] - indiv).mean()]
    return out


def gene_table(rows, id_to_name: dict, symbol_of: dict) -> pd.DataFrame:
    """perturbation_genes.parquet: per perturbed set and type, every affected gene's mean cosine, most affected first."""
    cols = ["perturbed", "perturbation", "affected", "affected_symbol", "cos_sim_mean", "cos_sim_std", "n_detections", "shift"]
    recs = []
    for (label, kind), token, mean, std, n in rows:
        gid = id_to_name.get(token, str(token))
        recs.append((label, kind, gid, symbol_of.get(gid, gid), mean, std, n, 1 - mean))
    t = pd.DataFrame(recs, columns=cols)
    return t.sort_values(["perturbed", "perturbation", "cos_sim_mean"], kind="stable").reset_index(drop=True)
