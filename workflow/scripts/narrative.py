"""Rule `narrative`: aggregated metrics -> a tissue-blind prompt (and MedGemma's text) in narrative.json.

The prompt carries only aggregated metrics (no tissue or organ words, no cell-type names, no gene
symbols, no raw counts; the sample is named by a hash) and is checked by tissuelens.report.leakage
before anything is written. With `--settings '{"checkpoint": DIR}'` the local checkpoint runs through
transformers' image-text-to-text pipeline on the prompt and the letterboxed tissue image.

By hand:
    python workflow/scripts/narrative.py --dataset demo --entry '{"source": "synthetic", "spatial": true}' \
        --qc results/demo/qc.json --preprocessed results/demo/preprocessed.h5ad --plan '{}' \
        --out /tmp/narrative.json
"""

import argparse
from pathlib import Path

from tissuelens import cli


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--entry", type=cli.settings_arg, default={}, help="the dataset's config entry (JSON)")
    parser.add_argument("--qc", required=True, type=Path)
    parser.add_argument("--preprocessed", required=True, type=Path)
    parser.add_argument("--plan", required=True, type=cli.settings_arg, help="stage plan (JSON), see report.stages")
    parser.add_argument("--settings", type=cli.settings_arg, default={}, help="report.narrative settings (JSON)")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)

    from tissuelens.io import read_h5ad, write_json
    from tissuelens.report import readers
    from tissuelens.report.prompt import make_narrative

    qc = readers.read_json(args.qc)
    adata = read_h5ad(args.preprocessed)
    record = make_narrative(args.dataset, args.entry, qc, adata, args.plan, args.settings)
    write_json(record, args.out)
    print(record["prompt"])
    if record["text"] is not None:
        print("\n--- model text ---\n" + record["text"])


if __name__ == "__main__":
    cli.run(main)
