"""Rule `loki_retrieve`: for each spot's H&E image embedding, the top-k transcriptome (text) embeddings
(Loki's retrieve_st_by_image), within the dataset or against a reference dataset's embeddings.

Writes retrieval.parquet (one row per spot and rank) and retrieval.json (accuracy at k against the spot
itself and against its label). Runs in the main environment or in workflow/envs/loki.yaml (Python 3.9).
"""

import argparse
from pathlib import Path

import pandas as pd

from tissuelens import cli
from tissuelens.io import atomic_path, read_h5ad, write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--embeddings", required=True, type=Path)
    parser.add_argument("--reference", type=Path, default=None, help="the reference dataset's embeddings.h5ad")
    parser.add_argument("--reference-name", default=None)
    parser.add_argument("--settings", required=True, type=cli.settings_arg, help="embed.loki.retrieve settings as JSON")
    parser.add_argument("--out", required=True, type=Path, help="retrieval.parquet")
    parser.add_argument("--summary", required=True, type=Path, help="retrieval.json")
    args = parser.parse_args(argv)

    from tissuelens.embed.loki.run import run_retrieve

    reference = read_h5ad(args.reference) if args.reference else None
    table, summary = run_retrieve(read_h5ad(args.embeddings), args.settings, str(args.embeddings), reference, args.reference_name)
    if table is None:
        table = pd.DataFrame({"spot": pd.Series(dtype=str), "rank": pd.Series(dtype="int64"),
                              "match": pd.Series(dtype=str), "similarity": pd.Series(dtype="float64")})
    with atomic_path(args.out) as tmp:
        table.to_parquet(tmp)
    write_json(summary, args.summary)
    print(summary)


if __name__ == "__main__":
    cli.run(main)
