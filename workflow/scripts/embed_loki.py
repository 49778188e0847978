"""Rule `embed_loki`: Loki/OmiCLIP gene-sentence text and H&E patch image embeddings of every spot.

Reads results/{dataset}/preprocessed.h5ad and a Loki model directory (resources/models/{model}/), writes
embeddings.h5ad (obsm X_loki_text, X_loki_image), the activations directory for the SAE stage and a
metrics JSON. Runs in the main environment or in workflow/envs/loki.yaml (Python 3.9): imports only what that
env has.
"""

import argparse
import json
import logging
from pathlib import Path

from tissuelens import cli
from tissuelens.io import atomic_path, read_h5ad, to_h5ad, write_json

log = logging.getLogger("embed_loki")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--h5ad", required=True, type=Path, help="results/{dataset}/preprocessed.h5ad")
    parser.add_argument("--model-dir", required=True, type=Path, help="resources/models/{model}")
    parser.add_argument("--model", required=True, help="the model's name in config (obsm key X_{model})")
    parser.add_argument("--settings", required=True, type=cli.settings_arg, help="embed.loki settings as JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, type=Path, help="embeddings.h5ad")
    parser.add_argument("--activations", required=True, type=Path, help="activations directory")
    parser.add_argument("--metrics", required=True, type=Path, help="metrics JSON")
    args = parser.parse_args(argv)

    import torch

    from tissuelens.embed.loki.run import embed_spots, quality_metrics
    from tissuelens.models.loki import load_checkpoint

    torch.manual_seed(args.seed)
    adata = read_h5ad(args.h5ad)
    ckpt = load_checkpoint(args.model_dir)
    log.info("Loki checkpoint %s (%s)", ckpt.weights, "untrained" if ckpt.untrained else "trained")
    with atomic_path(args.activations) as act_tmp:
        out, metrics = embed_spots(adata, ckpt, args.settings, model_name=args.model, where=str(args.h5ad), activations_dir=act_tmp)
        metrics.update(quality_metrics(out, args.seed))
        metrics["settings"] = args.settings
        out.uns["tissuelens_embed"] = json.dumps({k: v for k, v in metrics.items() if k != "settings"})
        with atomic_path(args.out) as h5_tmp:
            to_h5ad(out, h5_tmp)
            write_json(metrics, args.metrics)
    print(json.dumps({k: metrics[k] for k in ("n_spots", "untrained", "genes_in_context") if k in metrics}, indent=2))


if __name__ == "__main__":
    cli.run(main)
