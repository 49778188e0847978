"""Rule `analyze`: preprocessed.h5ad + domains.parquet -> marker annotation, doublets (single-cell data),
spatial statistics and an aggregated summary under results/{dataset}/analyze/."""

import argparse
import json
from pathlib import Path

from tissuelens import cli
from tissuelens.analyze.run import analyze, load_domains
from tissuelens.io import atomic_path, read_h5ad, write_json, write_parquet


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--h5ad", required=True, type=Path)
    parser.add_argument("--domains", required=True, type=Path)
    parser.add_argument("--entry", required=True, type=json.loads, help="the dataset's config entry as JSON")
    parser.add_argument("--settings", required=True, type=cli.settings_arg, help="analyze settings")
    parser.add_argument("--markers", type=Path, help="marker file (default: analyze.markers.path)")
    parser.add_argument("--group-source", default="", help="domain column supplying obs['group'] ('' = none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--outdir", required=True, type=Path)
    args = parser.parse_args(argv)
    adata = read_h5ad(args.h5ad)
    domains = load_domains(args.domains, adata.obs_names)
    if args.markers is not None:
        args.settings["markers"] = {**args.settings["markers"], "path": str(args.markers)}
    res = analyze(adata, domains, args.settings, args.entry.get("spatial", False), args.seed, str(args.h5ad),
                  args.group_source or None, args.entry.get("section_key"))
    files = {"annotation": "annotation.parquet", "doublets": "doublets.parquet"}
    tables = {"majority": "domain_types.csv", "net": "markers_used.csv", "nhood": "nhood_enrichment.csv",
              "cooccurrence": "co_occurrence.csv", "svg": "spatially_variable_genes.csv"}
    # the summary last: its presence marks a complete run
    for name, file in files.items():
        write_parquet(res[name], args.outdir / file)
    for name, file in tables.items():
        with atomic_path(args.outdir / file) as tmp:
            res[name].to_csv(tmp, index=False)
    write_json(res["summary"], args.outdir / "summary.json")
    print(json.dumps(res["summary"], indent=2))


if __name__ == "__main__":
    cli.run(main)
