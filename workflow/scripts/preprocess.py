"""Rule `preprocess`: raw.h5ad -> results/{dataset}/preprocessed.h5ad and qc.json."""

import argparse
import json
from pathlib import Path

from tissuelens import cli
from tissuelens.io import atomic_path, to_h5ad, write_json
from tissuelens.preprocess import attach_groups, preprocess, read_raw


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, type=Path)
    parser.add_argument("--entry", required=True, type=json.loads, help="the dataset's config entry as JSON")
    parser.add_argument("--settings", required=True, type=cli.settings_arg)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--qc", required=True, type=Path)
    parser.add_argument("--groups", type=Path, help="domains.parquet whose --group-column supplies obs['group'] "
                        "(a dataset without group_key, analyze.group_source)")
    parser.add_argument("--group-column", choices=["spatial_domain", "expr_leiden"])
    parser.add_argument("--doublet-rate", type=float, default=0.05,
                        help="Scrublet's expected doublet rate (settings remove_doublets, single-cell data)")
    parser.add_argument("--seed", type=int, default=0, help="Scrublet's seed (settings remove_doublets)")
    args = parser.parse_args(argv)
    adata, entry = read_raw(args.raw), args.entry
    if args.groups is not None:
        adata = attach_groups(adata, args.groups, args.group_column)
        entry = {**entry, "group_key": args.group_column}
    adata, report = preprocess(adata, entry, args.settings, str(args.raw), args.doublet_rate, args.seed)
    report["group_source"] = args.group_column if args.groups is not None else ("group_key" if entry.get("group_key") else None)
    report["settings"] = args.settings
    # both outputs appear together: the h5ad is renamed into place only after qc.json is written
    with atomic_path(args.out) as tmp:
        to_h5ad(adata, tmp)
        write_json(report, args.qc)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    cli.run(main)
