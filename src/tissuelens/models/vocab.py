"""Gene vocabularies for random (untrained) checkpoints.

A random checkpoint needs dictionaries that cover real data. The vocabulary comes from one of:

* `genes_from_dataset`: a dataset's `results/<dataset>/preprocessed.h5ad` (declared as the rule's
  input): its Ensembl ids, and per gene the non-zero median of count / cell total x 10,000 (exactly
  how Geneformer's gene medians are defined, computed on this dataset instead of Genecorpus);
* `genes_file`: a text file with one Ensembl id per line (optionally a tab and the gene's median);
  genes without a median get a seeded log-normal one.

`gene_fraction` < 1 keeps a seeded random subset (so some of the dataset's genes are unknown to the
model, as with real dictionaries) and `extra_genes` adds ids the data lacks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tissuelens.errors import InputError


def nonzero_cp10k_medians(counts, ids: list[str]) -> dict[str, float]:
    """Per gene: median over cells with a non-zero count of count / cell total x 10,000."""
    import scipy.sparse as sp

    csc = sp.csc_matrix(counts, dtype=np.float64)
    totals = np.asarray(csc.sum(axis=1)).ravel()
    out = {}
    for j, gene in enumerate(ids):
        lo, hi = csc.indptr[j], csc.indptr[j + 1]
        rows, vals = csc.indices[lo:hi], csc.data[lo:hi]
        keep = (vals > 0) & (totals[rows] > 0)
        if keep.any():
            out[gene] = float(np.median(vals[keep] / totals[rows[keep]] * 10_000))
    return out


def genes_from_h5ad(path: str, gene_id_key: str = "gene_ids", counts_layer: str = "counts") -> tuple[list[str], dict, dict]:
    """(Ensembl ids, medians, id -> symbol) from a preprocessed AnnData."""
    from tissuelens.io import read_h5ad

    adata = read_h5ad(path)
    if gene_id_key not in adata.var:
        raise InputError(f"{path}: var has no column '{gene_id_key}' with Ensembl ids (has: {', '.join(adata.var.columns) or 'none'})")
    counts = adata.layers[counts_layer] if counts_layer in adata.layers else adata.X
    ids = adata.var[gene_id_key].astype(str).str.upper().tolist()
    medians: dict[str, float] = {}
    for gene, med in nonzero_cp10k_medians(counts, ids).items():
        medians.setdefault(gene, med)
    symbols = dict(zip(ids, adata.var_names.astype(str)))
    return list(dict.fromkeys(ids)), medians, symbols


def genes_from_file(path: str) -> tuple[list[str], dict]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path}: genes_file not found")
    genes, medians = [], {}
    for n, line in enumerate(p.read_text().splitlines(), 1):
        parts = line.strip().split("\t")
        if not parts[0] or parts[0].startswith("#"):
            continue
        gene = parts[0].upper()
        genes.append(gene)
        if len(parts) > 1:
            try:
                medians[gene] = float(parts[1])
            except ValueError:
                raise InputError(f"{path}:{n}: median '{parts[1]}' is not a number") from None
    if not genes:
        raise InputError(f"{path}: no gene ids")
    return list(dict.fromkeys(genes)), medians


def random_vocabulary(
    settings: dict, seed: int, genes_h5ad: str | None = None
) -> tuple[list[str], dict[str, float], dict[str, str]]:
    """Genes, medians and symbols for a random checkpoint from its `random:` settings."""
    from tissuelens.models.geneformer import random_medians

    symbols: dict[str, str] = {}
    if genes_h5ad:
        genes, medians, symbols = genes_from_h5ad(genes_h5ad, settings.get("gene_id_key", "gene_ids"))
    elif settings.get("genes_file"):
        genes, medians = genes_from_file(settings["genes_file"])
    else:
        genes, medians = [], {}
    rng = np.random.default_rng(seed)
    fraction = settings.get("gene_fraction", 1.0)
    if fraction < 1.0 and genes:
        keep = np.sort(rng.choice(len(genes), size=max(1, int(round(fraction * len(genes)))), replace=False))
        genes = [genes[i] for i in keep]
    extra = int(settings.get("extra_genes", 0))
    taken = set(genes)
    genes = genes + [g for g in (f"ENSG{99_000_000_000 + i:011d}" for i in range(extra)) if g not in taken]
    if not genes:
        raise InputError("random checkpoint: no genes (set genes_from_dataset, genes_file or extra_genes)")
    # genes without a median in the data (never expressed, extra ids, a file without medians)
    # get seeded log-normal medians shaped like the real dictionary
    fallback = random_medians(genes, seed)
    medians = {g: medians[g] if medians.get(g, 0) > 0 else fallback[g] for g in genes}
    return genes, medians, symbols
