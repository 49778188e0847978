"""Tangram cell-type decomposition of spots as Loki's `cell_type_decompose`: the seeded map, proportions
weighted by each type's abundance, Loki's percentile normalisation and non-maximum suppression, and the
per-spot table. The rule-level step is `run.run_decompose`.

Imported by the Loki stack (Python 3.9); tangram only inside functions.
"""

from __future__ import annotations

import numpy as np

from tissuelens.embed.loki.inputs import coordinates
from tissuelens.errors import InputError


def abundance_weights(types, labels, settings: dict, where: str) -> np.ndarray:
    """Each type's weight for the per-spot proportions (see `proportions`): the reference's cell count per type
    (`weights: reference`, Loki's tutorials), the user's `fractions` (`weights: fractions`), or 1 (`none`)."""
    mode = settings.get("weights", "reference")
    if mode == "none":
        return np.ones(len(types))
    if mode == "reference":
        labels = np.asarray(labels).astype(str)
        return np.array([float((labels == t).sum()) for t in types])
    if mode != "fractions":
        raise InputError(f"{where}: embed.loki.decompose.weights: '{mode}' is not one of reference, fractions, none")
    given = settings.get("fractions")
    if not given:
        raise InputError(f"{where}: embed.loki.decompose.weights: fractions needs embed.loki.decompose.fractions "
                         "(a fraction for every cell type of the reference)")
    given = {str(k): v for k, v in given.items()}
    missing, unknown = [t for t in types if t not in given], sorted(set(given) - set(types))
    if missing or unknown:
        raise InputError(f"{where}: embed.loki.decompose.fractions: "
                         + (f"no fraction for {', '.join(missing)}" if missing else f"no reference cells of type {', '.join(unknown)}")
                         + f" (the reference's types: {', '.join(types)})")
    w = np.array([float(given[t]) for t in types])
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise InputError(f"{where}: embed.loki.decompose.fractions: fractions must be finite, non-negative and not all 0")
    return w / w.sum()


def proportions(ct_pred, weights=None) -> np.ndarray:
    """Per-spot cell-type proportions from Tangram's clusters-mode projection (tangram_ct_pred, spots x types).

    In clusters mode each type's mapping row sums to 1 over the spots: a column is where that type's cells
    go, not how many there are. Each column is multiplied by its type's abundance (`weights`: cell counts
    or fractions; None = 1), then each spot is divided by its sum (all-zero spots stay 0)."""
    p = np.clip(np.asarray(ct_pred, dtype=np.float64), 0, None)
    if weights is not None:
        p = p * np.asarray(weights, dtype=np.float64)[None, :]
    total = p.sum(axis=1, keepdims=True)
    return p / np.where(total > 0, total, 1.0)


def normalize_percentile(scores, min_percentile: float = 5, max_percentile: float = 95) -> np.ndarray:
    """Each column clipped to its [min, max] percentiles and scaled to [0, 1] (Loki's normalize_percentile;
    a constant column becomes 0 where Loki divides by zero)."""
    x = np.asarray(scores, dtype=np.float64)
    lo = np.percentile(x, min_percentile, axis=0)
    hi = np.percentile(x, max_percentile, axis=0)
    span = hi - lo
    out = (np.clip(x, lo, hi) - lo) / np.where(span > 0, span, 1.0)
    return np.where(span > 0, out, 0.0)


def nms(scores) -> np.ndarray:
    """Loki's NMS_mode: each spot keeps its largest score (every tie kept), the other types are set to 0."""
    x = np.asarray(scores, dtype=np.float64)
    return np.where(x == x.max(axis=1, keepdims=True), x, 0.0)


def seeded_tangram_map(sc_ad, st_ad, settings: dict, seed: int):
    """tg.map_cells_to_space (clusters mode, Loki's arguments) reproducible for every seed.

    tangram-sc 1.0.4 seeds numpy (its initial map) and torch only `if random_state:`, so seed 0 would start
    from numpy's global state: we seed both ourselves (numpy's legacy generator takes seed mod 2**32) and
    restore numpy's global state afterwards."""
    import tangram as tg
    import torch

    state = np.random.get_state()
    try:
        np.random.seed(int(seed) % 2**32)
        torch.manual_seed(int(seed))
        return tg.map_cells_to_space(sc_ad, st_ad, mode="clusters", cluster_label="cell_type",
                                     device=settings.get("device", "cpu"), scale=False, density_prior="uniform",
                                     random_state=int(seed) % 2**32, verbose=False, num_epochs=int(settings["num_epochs"]))
    finally:
        np.random.set_state(state)


def cell_counts(emb, settings: dict, where: str):
    """The spots' cell counts from obs[`cell_count_key`] (None when unset); InputError when absent or not counts."""
    key = settings.get("cell_count_key")
    if key is None:
        return None
    if key not in emb.obs:
        raise InputError(f"{where}: embed.loki.decompose.cell_count_key: obs has no column '{key}'")
    try:
        n = np.asarray(emb.obs[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{where}: embed.loki.decompose.cell_count_key: obs['{key}'] is not numeric") from None
    if not np.all(np.isfinite(n)) or (n < 0).any():
        raise InputError(f"{where}: embed.loki.decompose.cell_count_key: obs['{key}'] has negative or missing counts")
    return n


def decomposition_table(ct_pred, types, weights, settings: dict, emb, where: str = "decompose"):
    """The per-spot table: proportions of every type, `dominant`, the raw projection (`mapping:<type>`) and,
    with `nms_mode`, Loki's percentile-normalised (`percentile:<type>`) and NMS (`nms:<type>`) scores."""
    import pandas as pd

    raw = np.asarray(ct_pred, dtype=np.float64)
    props = proportions(raw, weights)
    x, y = coordinates(emb)
    cols = {"obs_name": np.asarray(emb.obs_names).astype(str), "x": x, "y": y}
    cols.update({t: props[:, j] for j, t in enumerate(types)})
    cols["dominant"] = np.asarray(types, dtype=object)[props.argmax(axis=1)]
    cols.update({f"mapping:{t}": raw[:, j] for j, t in enumerate(types)})
    counts = cell_counts(emb, settings, where)
    if counts is not None:  # expected cells of each type per spot (Loki's cell_num with the proportions)
        cols["n_cells"] = counts
        cols.update({f"cells:{t}": props[:, j] * counts for j, t in enumerate(types)})
    if settings.get("nms_mode"):
        major = settings.get("major_types") or list(types)
        idx = [types.index(t) for t in major]
        pct = normalize_percentile(raw[:, idx], settings.get("min_percentile", 5), settings.get("max_percentile", 95))
        kept = nms(pct)
        cols.update({f"percentile:{t}": pct[:, j] for j, t in enumerate(major)})
        cols.update({f"nms:{t}": kept[:, j] for j, t in enumerate(major)})
    return pd.DataFrame(cols)


def history_number(value) -> float | None:
    """A float from Tangram's training history (numbers, or strings such as 'tensor(-0.99, grad_fn=...)')."""
    import re

    try:
        x = float(value)
    except (TypeError, ValueError):
        m = re.search(r"-?\d+(\.\d+)?(e-?\d+)?", str(value))
        x = float(m.group(0)) if m else float("nan")
    return x if np.isfinite(x) else None  # unused regularisers are NaN
