"""Rule `preprocess`: raw.h5ad -> results/{dataset}/preprocessed.h5ad and qc.json."""

import argparse
import json
from pathlib import Path

from tissuelens import cli
from tissuelens.datasets.contract import integer_counts
from tissuelens.io import atomic_path, read_h5ad, to_h5ad, write_json
from tissuelens.preprocess import preprocess


def read_raw(path: Path):
    adata = read_h5ad(path)
    adata.X = integer_counts(adata.X, str(path), "X")
    return adata


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, type=Path)
    parser.add_argument("--entry", required=True, type=json.loads, help="the dataset's config entry as JSON")
    parser.add_argument("--settings", required=True, type=cli.settings_arg)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--qc", required=True, type=Path)
    args = parser.parse_args(argv)
    adata, report = preprocess(read_raw(args.raw), args.entry, args.settings, str(args.raw))
    report["settings"] = args.settings
    # both outputs appear together: the h5ad is renamed into place only after qc.json is written
    with atomic_path(args.out) as tmp:
        to_h5ad(adata, tmp)
        write_json(report, args.qc)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli.run(main)
