"""Rule `agreement`: ARI / NMI between expression Leiden, spatial domains, labels, the dominant factor of
the best PNMF-GP variant (lowest held-out deviance) and Leiden on each embedding -> agreement.csv."""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from tissuelens import cli
from tissuelens.analyze.agreement import agreement_table, factor_argmax
from tissuelens.analyze.domains import leiden
from tissuelens.errors import InputError
from tissuelens.io import atomic_path, read_h5ad


def best_variant(comparison: Path) -> str:
    table = pd.read_csv(comparison)
    if "variant" not in table or table.empty:
        raise InputError(f"{comparison}: no variant rows")
    col = "val_deviance" if "val_deviance" in table and table["val_deviance"].notna().any() else "train_deviance"
    return str(table.sort_values(col, kind="stable")["variant"].iloc[0])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--h5ad", required=True, type=Path)
    parser.add_argument("--domains", required=True, type=Path)
    parser.add_argument("--comparison", type=Path, help="factorize/comparison.csv (picks the best variant)")
    parser.add_argument("--factors", nargs="*", default=[], help="VARIANT=factors.npy of every variant")
    parser.add_argument("--embeddings", nargs="*", default=[], help="MODEL=embeddings.h5ad")
    parser.add_argument("--settings", required=True, type=cli.settings_arg, help="analyze.domains settings")
    parser.add_argument("--group-source", default="", help="domain column that supplied obs['group'] ('' = labels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    adata = read_h5ad(args.h5ad, backed=True)
    obs = adata.obs_names
    domains = pd.read_parquet(args.domains).reindex(obs)
    parts = {c: domains[c] for c in ("expr_leiden", "spatial_domain") if domains[c].notna().any()}
    if "group" in adata.obs and not args.group_source:  # labels (domains standing in for labels add nothing)
        parts["labels"] = pd.Series(adata.obs["group"].astype(str).to_numpy(), index=obs)
    factors = dict(f.split("=", 1) for f in args.factors)
    if args.comparison is not None and factors:
        variant = best_variant(args.comparison)
        parts[f"factors_{variant}"] = factor_argmax(np.load(factors[variant]), obs)
    s = args.settings
    for spec in args.embeddings:
        model, path = spec.split("=", 1)
        emb = read_h5ad(path)
        x = np.asarray(emb.obsm[f"X_{model}"], dtype=np.float64)
        ok = np.isfinite(x).all(axis=1)
        parts[f"leiden_{model}"] = pd.Series(
            np.asarray(leiden(x[ok], s["n_neighbors"], s["resolution"], args.seed, "E")).astype(str),
            index=emb.obs_names[ok])
    table = agreement_table(parts)
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False)
    print(table.to_string(index=False))


if __name__ == "__main__":
    cli.run(main)
