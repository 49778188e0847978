"""embed (Geneformer): cell embeddings, token activations for the SAE stage, run-to-run consistency."""

from __future__ import annotations

import argparse

from tissuelens import cli


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--h5ad", required=True, help="preprocessed.h5ad (layers['counts'], var gene ids)")
    ap.add_argument("--checkpoint", required=True, help="resources/models/<model>/")
    ap.add_argument("--model", required=True)
    ap.add_argument("--settings", required=True, type=cli.settings_arg, help="embed settings (JSON)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", required=True, help="embeddings.h5ad")
    ap.add_argument("--activations", required=True, help="activations/ directory")
    args = ap.parse_args(argv)
    set_threads(args.threads)
    from tissuelens.embed.geneformer.run import run_embed

    run_embed(args.h5ad, args.checkpoint, args.model, args.settings, args.out, args.activations, seed=args.seed)


def set_threads(n):
    if n:
        import numba
        import torch

        torch.set_num_threads(n)
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


if __name__ == "__main__":
    cli.run(main)
