"""perturb (Geneformer): in-silico perturbation as InSilicoPerturber; per-cell, per-gene-set and affected-gene tables."""

from __future__ import annotations

from tissuelens import cli


def main(argv=None):
    ap = cli.geneformer_parser(__doc__)
    ap.add_argument("--out", required=True, help="perturbation.tsv (per gene and type)")
    ap.add_argument("--cells", required=True, help="perturbation_cells.parquet (per cell)")
    ap.add_argument("--genes", required=True, help="perturbation_genes.parquet (affected genes)")
    args = ap.parse_args(argv)
    from tissuelens.embed.geneformer.run import run_perturb, set_threads

    set_threads(args.threads)
    run_perturb(args.h5ad, args.checkpoint, args.model, args.settings, args.out, args.cells, args.genes, seed=args.seed)


if __name__ == "__main__":
    cli.run(main)
