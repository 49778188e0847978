"""Cross-stage agreement: ARI and NMI between every pair of cell partitions (expression Leiden, spatial
domains, labels, the argmax of PNMF-GP factors, Leiden on each embedding), on the cells both label."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd


def _missing(values: pd.Series) -> np.ndarray:
    return values.isna().to_numpy() | values.astype(str).isin(["", "nan", "None"]).to_numpy()


def agreement_table(partitions: dict[str, pd.Series]) -> pd.DataFrame:
    """One row per unordered pair of partitions (indexed by cell): a, b, n_cells, ari, nmi."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rows = []
    for (na, pa), (nb, pb) in itertools.combinations(partitions.items(), 2):
        common = pa.index.intersection(pb.index)
        a, b = pa.loc[common], pb.loc[common]
        ok = ~(_missing(a) | _missing(b))
        a, b = a.astype(str).to_numpy()[ok], b.astype(str).to_numpy()[ok]
        n = int(ok.sum())
        rows.append({"a": na, "b": nb, "n_cells": n,
                     "ari": float(adjusted_rand_score(a, b)) if n else np.nan,
                     "nmi": float(normalized_mutual_info_score(a, b)) if n else np.nan})
    return pd.DataFrame(rows, columns=["a", "b", "n_cells", "ari", "nmi"])


def factor_argmax(factors: np.ndarray, obs_names) -> pd.Series:
    """Each cell's dominant factor (F1, F2, ... in the stored factor order)."""
    best = np.asarray(factors).argmax(axis=1)
    return pd.Series([f"F{i + 1}" for i in best], index=pd.Index(obs_names))


def matrix(table: pd.DataFrame, value: str) -> pd.DataFrame:
    """Symmetric partitions x partitions matrix of `value` (1 on the diagonal)."""
    names = list(dict.fromkeys(list(table["a"]) + list(table["b"])))
    m = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for row in table.itertuples():
        m.loc[row.a, row.b] = m.loc[row.b, row.a] = getattr(row, value)
    return m
