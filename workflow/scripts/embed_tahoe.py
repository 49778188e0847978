"""Rule `embed_tahoe`: Tahoe-x1 cell embeddings and per-layer token activations (tahoe-x1's own stack).

Reads results/{dataset}/preprocessed.h5ad (raw counts in layers["counts"], Ensembl ids in
var["gene_ids"]) and a Tahoe-x1 model folder (resources/models/{model}/: vocab.json, model_config.yml,
collator_config.yml, model.safetensors); writes embeddings.h5ad (obsm X_{model}), the activations
directory and a metrics JSON. Runs in the Tahoe container or workflow/envs/tahoe.yaml (GPU, flash attention) or
workflow/envs/tahoe_cpu.yaml (CPU, torch attention with the padding masked: tissuelens.models.tahoe).
"""

import argparse
import json
from pathlib import Path

from tissuelens import cli
from tissuelens.io import atomic_path, read_h5ad, to_h5ad, write_json


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--h5ad", required=True, type=Path)
    parser.add_argument("--model-dir", required=True, type=Path)
    parser.add_argument("--model", required=True)
    parser.add_argument("--settings", required=True, type=cli.settings_arg, help="embed.tahoe settings as JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--activations", required=True, type=Path)
    parser.add_argument("--metrics", required=True, type=Path)
    args = parser.parse_args(argv)

    from tissuelens.embed.tahoe.run import embed_dataset
    from tissuelens.models.tahoe import load_checkpoint

    adata = read_h5ad(args.h5ad)
    ckpt = load_checkpoint(args.model_dir)
    with atomic_path(args.activations) as act_tmp:
        out, metrics = embed_dataset(adata, ckpt, args.settings, model_name=args.model, seed=args.seed,
                                     where=str(args.h5ad), activations_dir=act_tmp)
        metrics["settings"] = args.settings
        with atomic_path(args.out) as h5_tmp:
            to_h5ad(out, h5_tmp)
            write_json(metrics, args.metrics)
    print(json.dumps({k: metrics[k] for k in ("n_cells", "untrained")}, indent=2))


if __name__ == "__main__":
    cli.run(main)
