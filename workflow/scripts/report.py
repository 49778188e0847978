"""Rule `report`: every built stage of one dataset -> results/{dataset}/report/index.html (self-contained).

Also writes the same figures as PNGs under --figures for `snakemake --report`. A stage the plan marks as
disabled or not built becomes a section that says so; a corrupt stage file stops the job with one
`error:` line naming it, and no output is left behind.

By hand (the plan lists each stage's files; see tissuelens.report.stages):
    python workflow/scripts/report.py --dataset demo --qc results/demo/qc.json \
        --preprocessed results/demo/preprocessed.h5ad --plan '{}' --out /tmp/index.html
"""

import argparse
import json
from pathlib import Path

from tissuelens import cli


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--qc", required=True, type=Path)
    parser.add_argument("--preprocessed", required=True, type=Path)
    parser.add_argument("--plan", required=True, type=cli.settings_arg, help="stage plan (JSON), see report.stages")
    parser.add_argument("--settings", type=cli.settings_arg, default={}, help="report settings (JSON)")
    parser.add_argument("--run-config", type=cli.settings_arg, default={}, help="the dataset's effective config (JSON)")
    parser.add_argument("--narrative", type=Path, default=None, help="narrative.json (omit when turned off)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--figures", type=Path, default=None, help="directory for the figures as PNG files")
    args = parser.parse_args(argv)

    from tissuelens.report.build import build_report
    from tissuelens.report.stages import PLAN_STAGES

    plan = {s: args.plan.get(s, {"status": "absent", "reason": "not in the plan", "units": {}, "files": {}})
            for s in PLAN_STAGES}
    plan.update({k: v for k, v in args.plan.items() if k not in plan})  # e.g. the Loki tasks' files
    out = build_report(args.dataset, args.qc, args.preprocessed, plan, args.settings, args.run_config, args.out,
                       figures_dir=args.figures, narrative_path=args.narrative)
    print(json.dumps({"report": str(out), "bytes": out.stat().st_size}))


if __name__ == "__main__":
    cli.run(main)
