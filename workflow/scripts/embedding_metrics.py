"""embedding_metrics: quality and consistency metrics of one model's embeddings (any model kind)."""

from __future__ import annotations

import argparse

from tissuelens import cli
from tissuelens.errors import InputError


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--embeddings", required=True, help="embeddings.h5ad with obsm['X_<model>']")
    ap.add_argument("--model", required=True)
    ap.add_argument("--settings", required=True, type=cli.settings_arg, help="embed settings (JSON); uses its metrics section")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="embedding_metrics.json")
    args = ap.parse_args(argv)
    from tissuelens.io import read_h5ad
    from tissuelens.embed.metrics import embedding_report
    from tissuelens.io import write_json

    adata = read_h5ad(args.embeddings)
    if not any(k == f"X_{args.model}" or k.startswith(f"X_{args.model}_") for k in adata.obsm):
        raise InputError(f"{args.embeddings}: no obsm['X_{args.model}'] embedding")
    write_json(embedding_report(adata, args.model, args.settings["metrics"], seed=args.seed), args.out)


if __name__ == "__main__":
    cli.run(main)
