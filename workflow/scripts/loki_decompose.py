"""Rule `loki_decompose`: per-spot cell-type proportions by Tangram (Loki's cell_type_decompose), mapping a
single-cell reference dataset's cells (OmiCLIP text embeddings, grouped by label) onto the spots' OmiCLIP
image embeddings, seeded for every seed value. Writes decompose.parquet (per spot: proportion of each type
weighted by its abundance, the dominant type, Tangram's raw projection `mapping:<type>`, and with nms_mode
Loki's `percentile:<type>` / `nms:<type>`) and decompose.json. Runs in the main environment or in
workflow/envs/loki.yaml (Python 3.9, tangram-sc 1.0.4).
"""

from pathlib import Path

from tissuelens import cli
from tissuelens.io import read_h5ad, write_json, write_parquet


def main(argv=None):
    parser = cli.loki_task_parser(__doc__, "decompose")
    parser.add_argument("--reference", required=True, type=Path, help="the reference dataset's embeddings.h5ad")
    parser.add_argument("--reference-name", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path, help="decompose.parquet")
    args = parser.parse_args(argv)

    from tissuelens.embed.loki.run import run_decompose

    table, summary = run_decompose(read_h5ad(args.embeddings), read_h5ad(args.reference), args.settings, args.seed,
                                   str(args.embeddings), args.reference_name)
    write_parquet(table, args.out)
    write_json(summary, args.summary)
    print({k: summary[k] for k in ("cell_types", "mean_proportions")})


if __name__ == "__main__":
    cli.run(main)
