"""embed (Geneformer): cell embeddings, token activations for the SAE stage, run-to-run consistency."""

from __future__ import annotations

from tissuelens import cli


def main(argv=None):
    ap = cli.geneformer_parser(__doc__)
    ap.add_argument("--out", required=True, help="embeddings.h5ad")
    ap.add_argument("--activations", required=True, help="activations/ directory")
    args = ap.parse_args(argv)
    from tissuelens.embed.geneformer.run import run_embed, set_threads

    set_threads(args.threads)
    run_embed(args.h5ad, args.checkpoint, args.model, args.settings, args.out, args.activations, seed=args.seed)


if __name__ == "__main__":
    cli.run(main)
