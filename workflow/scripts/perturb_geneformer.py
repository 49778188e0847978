"""perturb (Geneformer): in-silico perturbation as InSilicoPerturber; per-cell, per-gene-set and affected-gene tables."""

from __future__ import annotations

import argparse

from tissuelens import cli


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--h5ad", required=True, help="preprocessed.h5ad")
    ap.add_argument("--checkpoint", required=True, help="resources/models/<model>/")
    ap.add_argument("--model", required=True)
    ap.add_argument("--settings", required=True, type=cli.settings_arg, help="embed settings (JSON)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True, help="perturbation.tsv (per gene and type)")
    ap.add_argument("--cells", required=True, help="perturbation_cells.parquet (per cell)")
    ap.add_argument("--genes", required=True, help="perturbation_genes.parquet (affected genes)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from tissuelens.embed.geneformer.run import run_perturb

    run_perturb(args.h5ad, args.checkpoint, args.model, args.settings, args.out, args.cells, args.genes, seed=args.seed)


if __name__ == "__main__":
    cli.run(main)
