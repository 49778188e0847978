"""Rule `compare_factorizations`: every variant's metrics.json of a dataset -> comparison.csv."""

import argparse
from pathlib import Path

from tissuelens import cli
from tissuelens.factorize.run import compare


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--metrics", required=True, nargs="+", type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    compare(args.metrics, args.out)
    print(args.out.read_text())


if __name__ == "__main__":
    cli.run(main)
