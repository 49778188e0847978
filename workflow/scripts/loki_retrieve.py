"""Rule `loki_retrieve`: for each spot's H&E image embedding, the top-k transcriptome (text) embeddings
(Loki's retrieve_st_by_image), within the dataset or against a reference dataset's embeddings.

Writes retrieval.parquet (one row per spot and rank) and retrieval.json (accuracy at k against the spot
itself and against its label). Runs in the main environment or in workflow/envs/loki.yaml (Python 3.9).
"""

from pathlib import Path

import pandas as pd

from tissuelens import cli
from tissuelens.io import read_h5ad, write_json, write_parquet


def main(argv=None):
    parser = cli.loki_task_parser(__doc__, "retrieve")
    parser.add_argument("--reference", type=Path, default=None, help="the reference dataset's embeddings.h5ad")
    parser.add_argument("--reference-name", default=None)
    parser.add_argument("--out", required=True, type=Path, help="retrieval.parquet")
    args = parser.parse_args(argv)

    from tissuelens.embed.loki.run import run_retrieve

    reference = read_h5ad(args.reference) if args.reference else None
    table, summary = run_retrieve(read_h5ad(args.embeddings), args.settings, str(args.embeddings), reference, args.reference_name)
    if table is None:
        table = pd.DataFrame({"spot": pd.Series(dtype=str), "rank": pd.Series(dtype="int64"),
                              "match": pd.Series(dtype=str), "similarity": pd.Series(dtype="float64")})
    write_parquet(table, args.out)
    write_json(summary, args.summary)
    print(summary)


if __name__ == "__main__":
    cli.run(main)
