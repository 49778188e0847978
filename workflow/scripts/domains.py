"""Rule `domains`: raw.h5ad -> results/{dataset}/analyze/domains.parquet (expr_leiden, spatial_domain) and
domains.json (how the number of spatial domains was chosen; tissuelens.analyze.domains.choice).

Reads the raw data and preprocesses it in memory with the dataset's preprocess settings (the same function
as rule `preprocess`), so that the domains can supply obs["group"] to `preprocess` without a cycle."""

import argparse
import json
from pathlib import Path

from tissuelens import cli
from tissuelens.analyze.domains import choice_text, compute_domains
from tissuelens.io import write_json, write_parquet
from tissuelens.preprocess import preprocess, read_raw


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", required=True, type=Path)
    parser.add_argument("--entry", required=True, type=json.loads, help="the dataset's config entry as JSON")
    parser.add_argument("--preprocess-settings", required=True, type=cli.settings_arg)
    parser.add_argument("--settings", required=True, type=cli.settings_arg, help="analyze.domains settings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--doublet-rate", type=float, default=0.05,
                        help="Scrublet's expected doublet rate (preprocess.remove_doublets, single-cell data)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--record", required=True, type=Path, help="domains.json: the choice of the number of domains")
    args = parser.parse_args(argv)
    adata, _ = preprocess(read_raw(args.raw), args.entry, args.preprocess_settings, str(args.raw), args.doublet_rate,
                          args.seed)
    domains, record = compute_domains(adata, args.settings, args.entry.get("spatial", False), args.seed, str(args.raw))
    write_parquet(domains, args.out)
    write_json(record, args.record)
    for column in domains.columns:
        print(column, domains[column].value_counts(sort=False).to_dict())
    print(choice_text(record))


if __name__ == "__main__":
    cli.run(main)
