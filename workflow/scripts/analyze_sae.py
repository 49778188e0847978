"""Rule analyze_sae: tie a trained SAE's features to genes, cells, groups, tissue space and PNMF-GP factors.

Reads the SAE (SAELens format) and the activations it was trained on, plus the preprocessed AnnData (groups,
coordinates, gene symbols) and, when given, PNMF-GP factors. Writes features.parquet (one row per feature),
feature_genes.parquet, feature_groups.parquet, feature_factors.parquet (empty without factors) and the
self-contained dashboard.html. Bad input: one `error:` line, exit 2, no outputs.
"""

from __future__ import annotations

import argparse

from tissuelens import cli


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sae", required=True, help="trained SAE directory (SAELens format)")
    p.add_argument("--activations", required=True, help="embed/{model}/activations directory")
    p.add_argument("--preprocessed", required=True, help="preprocessed.h5ad of the dataset")
    p.add_argument("--factors", default=None, help="PNMF-GP factors.npy (cells x factors), optional")
    p.add_argument("--metrics", default=None, help="metrics.json of the training run (dashboard header)")
    p.add_argument("--loss-curve", default=None, help="loss_curve.png to embed in the dashboard")
    p.add_argument("--settings", type=cli.settings_arg, default={}, help="sae step settings (JSON)")
    p.add_argument("--title", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out-features", required=True)
    p.add_argument("--out-genes", required=True)
    p.add_argument("--out-groups", required=True)
    p.add_argument("--out-factors", required=True)
    p.add_argument("--out-dashboard", required=True)
    p.add_argument("--out-cell-activations", default=None,
                   help="cells x features sparse .npz aligned with the preprocessed obs (zero rows: cells not exported)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from tissuelens.sae.run import analyze

    outputs = {"features": args.out_features, "genes": args.out_genes, "groups": args.out_groups,
               "factors": args.out_factors, "dashboard": args.out_dashboard, "cells": args.out_cell_activations}
    analyze(args.sae, args.activations, args.preprocessed, args.settings, outputs=outputs, factors_path=args.factors,
            metrics=args.metrics, loss_curve=args.loss_curve, title=args.title, threads=args.threads)


if __name__ == "__main__":
    cli.run(main)
