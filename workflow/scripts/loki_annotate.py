"""Rule `loki_annotate`: zero-shot annotation of every spot from marker-gene sentences (Loki).

Reads results/{dataset}/embed/{model}/embeddings.h5ad, preprocessed.h5ad (gene names), the Loki model
directory and a marker file (PanglaoDB TSV or gene,cell_type CSV); writes annotation.parquet (per spot:
best type, similarity and softmax entropy from the image and the text embeddings, cosine to every type)
and annotation.json. Runs in the main environment or in workflow/envs/loki.yaml (Python 3.9).
"""

from pathlib import Path

from tissuelens import cli
from tissuelens.io import read_h5ad, write_json, write_parquet


def main(argv=None):
    parser = cli.loki_task_parser(__doc__, "annotate")
    parser.add_argument("--preprocessed", required=True, type=Path)
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path, help="annotation.parquet")
    args = parser.parse_args(argv)

    from tissuelens.embed.loki.run import run_annotate
    from tissuelens.models.loki import load_checkpoint

    emb = read_h5ad(args.embeddings)
    genes = read_h5ad(args.preprocessed, backed=True).var_names
    table, summary = run_annotate(emb, genes, load_checkpoint(args.model_dir), args.settings, str(args.embeddings))
    write_parquet(table, args.out)
    write_json(summary, args.summary)
    print({k: summary[k] for k in ("cell_types", "logit_scale")})


if __name__ == "__main__":
    cli.run(main)
