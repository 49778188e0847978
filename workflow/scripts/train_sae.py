"""Rule train_sae: train a sparse autoencoder (SAELens 6) on one layer of exported token activations.

Writes the SAE in SAELens' format (a directory that `sae_lens.SAE.load_from_disk` reads), metrics.json
(L0, fraction of variance explained, MSE, dead and dense features on held-out tokens), the per-step
training log and the loss-curve figure. Bad input: one `error:` line, exit 2, no outputs.

    python workflow/scripts/train_sae.py --activations results/demo/embed/geneformer/activations \
        --settings '{"k": 16}' --seed 0 --out-sae results/demo/sae/geneformer/sae \
        --metrics results/demo/sae/geneformer/metrics.json \
        --history results/demo/sae/geneformer/training_log.tsv \
        --loss-curve results/demo/sae/geneformer/loss_curve.png
"""

from __future__ import annotations

import argparse

from tissuelens import cli


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--activations", required=True, help="embed/{model}/activations directory")
    p.add_argument("--settings", type=cli.settings_arg, default={}, help="sae step settings (JSON)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (used when settings.seed is null)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out-sae", required=True, help="output directory in SAELens format")
    p.add_argument("--metrics", required=True)
    p.add_argument("--history", required=True, help="per-step training log (TSV)")
    p.add_argument("--loss-curve", required=True, help="PNG")
    p.add_argument("--checkpoints", default=None,
                   help="directory for resumable checkpoints (with settings n_checkpoints > 0); removed on success")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from tissuelens.sae.run import train

    train(args.activations, args.settings, args.seed, out_sae=args.out_sae, metrics=args.metrics, history=args.history,
          loss_curve=args.loss_curve, checkpoints=args.checkpoints, threads=args.threads)


if __name__ == "__main__":
    cli.run(main)
