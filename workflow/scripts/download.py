"""Rule `download`: fetch or synthesise one dataset into resources/datasets/{dataset}/raw.h5ad."""

import argparse
import json
from pathlib import Path

from tissuelens import cli
from tissuelens.datasets.load import load_dataset
from tissuelens.io import write_h5ad


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--entry", required=True, type=json.loads, help="the dataset's config entry as JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    adata = load_dataset(args.dataset, args.entry, args.seed, cache_dir=args.out.parent / "cache")
    write_h5ad(adata, args.out)
    print(f"wrote {args.out}: {adata.n_obs} cells x {adata.n_vars} genes")


if __name__ == "__main__":
    cli.run(main)
