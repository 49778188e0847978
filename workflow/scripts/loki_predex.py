"""Rule `loki_predex`: expression predicted from the H&E image (Loki's PredEx): each held-out spot's
image embedding against the training spots' transcriptome (text) embeddings, the similarity-weighted mean
of their expression, scored by per-gene Pearson against the measured expression. With `--reference`
(repeatable: name, embeddings.h5ad, preprocessed.h5ad) every spot is predicted from the reference slides
(Loki's evaluation), with the within-slide (spatial blocks) score beside it.

Writes predex_genes.csv (per gene: Pearson, mean measured and predicted), predex_spots.parquet (held-out
spots, best genes, measured and predicted) and predex.json. Runs in the main environment or in
workflow/envs/loki.yaml (Python 3.9).
"""

from pathlib import Path

import pandas as pd

from tissuelens import cli
from tissuelens.io import atomic_path, read_h5ad, write_json, write_parquet


def main(argv=None):
    parser = cli.loki_task_parser(__doc__, "predex")
    parser.add_argument("--preprocessed", required=True, type=Path)
    parser.add_argument("--reference", nargs=3, action="append", default=[], metavar=("NAME", "EMBEDDINGS", "PREPROCESSED"),
                        help="a slide to train on (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--genes-out", required=True, type=Path, help="predex_genes.csv")
    parser.add_argument("--spots-out", required=True, type=Path, help="predex_spots.parquet")
    args = parser.parse_args(argv)

    from tissuelens.embed.loki.run import run_predex

    references = [(name, read_h5ad(Path(e)), read_h5ad(Path(p))) for name, e, p in args.reference]
    genes, spots, summary = run_predex(read_h5ad(args.embeddings), read_h5ad(args.preprocessed), args.settings, args.seed,
                                       str(args.embeddings), references)
    if genes is None:
        genes = pd.DataFrame(columns=["gene", "pearson", "mean_measured", "mean_predicted"])
        spots = pd.DataFrame({"obs_name": pd.Series(dtype=str), "gene": pd.Series(dtype=str),
                              "measured": pd.Series(dtype="float64"), "predicted": pd.Series(dtype="float64")})
    with atomic_path(args.genes_out) as tmp:
        genes.to_csv(tmp, index=False)
    write_parquet(spots, args.spots_out)
    write_json(summary, args.summary)
    print(summary)


if __name__ == "__main__":
    cli.run(main)
