"""What the Loki task rules read: embeddings and their coordinates and labels, marker tables, curated
sentences, bulk samples, reference expression; and embeddings as a feature AnnData for Tangram.

Imported by the Loki stack (Python 3.9).
"""

from __future__ import annotations

import numpy as np

from tissuelens.config import config_path
from tissuelens.errors import InputError

IMAGE, TEXT = "X_loki_image", "X_loki_text"


def coordinates(adata) -> tuple:
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2] if "spatial" in adata.obsm else np.full((adata.n_obs, 2), np.nan)
    return xy[:, 0], xy[:, 1]


def image_embeddings(emb, enabled, where: str, task: str):
    """The spots' image embeddings; None (task skipped) when there are none and `enabled` is auto."""
    if IMAGE in emb.obsm:
        return np.asarray(emb.obsm[IMAGE], dtype=np.float64)
    if enabled is True:
        raise InputError(f"{where}: no image embeddings (obsm['{IMAGE}']): the dataset has no H&E image, which "
                         f"Loki's {task} needs (set embed.loki.{task}.enabled: auto to skip it)")
    return None


def labels_of(adata, key: str = "group"):
    if key not in adata.obs:
        return None
    values = adata.obs[key]
    return None if values.isna().any() else values.astype(str).to_numpy()


def marker_net(path, fmt: str, species, var_names, min_markers: int, where: str):
    """The marker table (analyze stage's reader) restricted to genes in the data."""
    from tissuelens.analyze.markers import match_genes, read_markers

    net = read_markers(path, fmt, species)
    return match_genes(net, var_names, int(min_markers), f"{where} ({path})")


def read_sentences(path, where: str) -> dict:
    """{cell type: sentence} from a curated CSV (columns cell_type, sentence), in file order, used verbatim."""
    import pandas as pd

    path = config_path(path)
    if not path.is_file():
        raise InputError(f"{where}: embed.loki.annotate.sentences: file not found: {path}")
    try:
        t = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # pandas' parser errors
        raise InputError(f"{where}: {path}: not a readable CSV ({type(e).__name__})") from None
    missing = [c for c in ("cell_type", "sentence") if c not in t]
    if missing:
        raise InputError(f"{where}: {path}: no column {', '.join(missing)} (needs cell_type,sentence)")
    t = t.assign(cell_type=t["cell_type"].str.strip(), sentence=t["sentence"].str.split().str.join(" "))
    if not len(t) or (t["cell_type"] == "").any() or (t["sentence"] == "").any():
        raise InputError(f"{where}: {path}: every row needs a cell type and a non-empty sentence")
    dup = sorted(set(t["cell_type"][t["cell_type"].duplicated()]))
    if dup:
        raise InputError(f"{where}: {path}: cell type listed twice: {', '.join(dup)}")
    return dict(zip(t["cell_type"], t["sentence"]))


def read_bulk(path, where: str):
    """(sample names, gene symbols, expression (samples, genes)) from a bulk table: first column the gene
    symbols, one numeric column per sample (CSV, or TSV by a .tsv/.txt name)."""
    import pandas as pd

    path = config_path(path)
    if not path.is_file():
        raise InputError(f"{where}: embed.loki.annotate.bulk: file not found: {path}")
    sep = "\t" if str(path).endswith((".tsv", ".txt", ".tsv.gz")) else ","
    try:
        t = pd.read_csv(path, sep=sep, index_col=0)
    except Exception as e:  # pandas' parser errors
        raise InputError(f"{where}: {path}: not a readable table ({type(e).__name__})") from None
    if not t.shape[1] or not len(t):
        raise InputError(f"{where}: {path}: needs a gene column and at least one sample column")
    try:
        x = t.to_numpy(dtype=np.float64).T
    except (TypeError, ValueError):
        raise InputError(f"{where}: {path}: sample columns must be numeric") from None
    if not np.all(np.isfinite(x)) or (x < 0).any():
        raise InputError(f"{where}: {path}: expression must be finite and non-negative")
    return [str(c) for c in t.columns], np.asarray(t.index.astype(str)), x


def expression(adata, genes: str):
    """(log-normalised X dense float64 (n, g), gene names) of the highly variable genes or all genes."""
    import scipy.sparse as sp

    cols = np.ones(adata.n_vars, dtype=bool)
    if genes == "highly_variable" and "highly_variable" in adata.var:
        cols = adata.var["highly_variable"].to_numpy(dtype=bool)
    x = adata.X[:, np.flatnonzero(cols)]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return np.asarray(x, dtype=np.float64), np.asarray(adata.var_names[cols]).astype(str)


def feature_anndata(x: np.ndarray, obs_names, obs=None):
    """An AnnData whose 'genes' are the embedding dimensions (Loki's generate_feature_ad)."""
    import anndata as ad
    import pandas as pd

    names = [f"omiclip_{j}" for j in range(x.shape[1])]
    out = ad.AnnData(np.asarray(x, dtype=np.float32), obs=pd.DataFrame(index=np.asarray(obs_names).astype(str)),
                     var=pd.DataFrame(index=names))
    if obs is not None:
        for key, values in obs.items():
            out.obs[key] = np.asarray(values)
    return out
