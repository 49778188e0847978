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

STATS = ("goal_state_shift", "vs_null", "aggregate_gene_shifts")
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


def summarise(cells: pd.DataFrame, mode: str, goal: bool, null: pd.DataFrame | None = None,
              background: pd.DataFrame | None = None, background_kind: str = "random_genes") -> pd.DataFrame:
    """One row per (perturbed set, type): effect summaries, the `mode` test, the random-gene control test.
    `background` (goal_state_shift): rows with perturbation, size (genes per set) and the per-cell values."""
    from scipy.stats import mannwhitneyu

    if mode == "goal_state_shift" and (background is None or not len(background)):
        raise ValueError("goal_state_shift needs a background (random gene sets or every gene perturbed)")
    rows = []
    for (label, kind), t in cells.groupby(["perturbed", "perturbation"], sort=False):
        v, c = _value(t, goal).dropna(), _value(t, goal, "control_").dropna()
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
    if mode == "aggregate_gene_shifts":
        return out.sort_values(["perturbation", "cos_sim_mean"], kind="stable").reset_index(drop=True)
    out["fdr"] = np.nan
    for kind, idx in out.groupby("perturbation").groups.items():  # one upstream run per perturbation type
        out.loc[idx, "fdr"] = bh_fdr(out.loc[idx, "pvalue"])
    out["significant"] = out["fdr"] < SIG_FDR
    by = "shift_mean" if mode == "goal_state_shift" else "test_vs_null_mean"
    return out.sort_values(["perturbation", "significant", by, "fdr"], ascending=[True, False, False, True],
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
