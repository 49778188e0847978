"""Rule train_sae: train a sparse autoencoder (SAELens 6) on one layer of exported token activations.

Writes the SAE in SAELens' format (a directory that `sae_lens.SAE.load_from_disk` reads), metrics.json
(L0, fraction of variance explained, MSE, dead and dense features on held-out tokens), the per-step
training log and the loss-curve figure. Bad input: one `error:` line, exit 2, no outputs.

    python workflow/scripts/train_sae.py --activations results/demo/embed/geneformer/activations \
        --settings '{"k": 16}' --seed 0 --out-sae results/demo/sae/geneformer/sae \
        --metrics results/demo/sae/geneformer/metrics.json \
        --history results/demo/sae/geneformer/training_log.tsv \
        --loss-curve results/demo/sae/geneformer/loss_curve.png
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # by hand, without an install

from tissuelens import cli  # noqa: E402

log = logging.getLogger("train_sae")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--activations", required=True, help="embed/{model}/activations directory")
    p.add_argument("--settings", type=cli.settings_arg, default={}, help="sae step settings (JSON)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (used when settings.seed is null)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out-sae", required=True, help="output directory in SAELens format")
    p.add_argument("--metrics", required=True)
    p.add_argument("--history", required=True, help="per-step training log (TSV)")
    p.add_argument("--loss-curve", required=True, help="PNG")
    p.add_argument("--checkpoints", default=None,
                   help="directory for resumable checkpoints (with settings n_checkpoints > 0); removed on success")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from tissuelens.device import resolve_device
    from tissuelens.io import write_json
    from tissuelens.sae.activations import open_activations, split_rows
    from tissuelens.sae.settings import check_sizes, resolve_settings

    settings = resolve_settings(args.settings)
    seed = int(settings["seed"] if settings["seed"] is not None else args.seed)
    acts = open_activations(args.activations, settings["layer"], settings["include_special_tokens"])
    d_sae = check_sizes(settings, acts.d_in, f"sae settings for {acts.path}")
    device = resolve_device(settings["device"])

    import torch

    from tissuelens.sae.metrics import evaluate, plot_training
    from tissuelens.sae.outputs import staged
    from tissuelens.sae.train import load_sae, save_sae, train_on_activations

    if args.threads:
        torch.set_num_threads(args.threads)
    train_rows, eval_rows = split_rows(acts.rows, settings["eval_tokens"], seed)
    if eval_rows.size == 0:
        log.warning("too few tokens to hold out an evaluation set; metrics use the training tokens")
        eval_rows = train_rows
    log.info("layer %s of %s: %d training tokens, %d evaluation tokens, d_in %d, d_sae %d (%s) on %s",
             acts.layer, acts.model, train_rows.size, eval_rows.size, acts.d_in, d_sae, settings["architecture"], device)

    with staged(sae=args.out_sae, metrics=args.metrics, history=args.history, curve=args.loss_curve) as out:
        result = train_on_activations(acts, train_rows, settings, seed, str(device), checkpoint_dir=args.checkpoints)
        save_sae(result, out["sae"])
        sae = load_sae(out["sae"], str(device))  # evaluate what SAELens loads back, not the object in memory
        metrics, frequency = evaluate(sae, acts.array, eval_rows, settings["batch_size"], str(device),
                                      settings["dense_threshold"])
        metrics = {
            "model": acts.model,
            "layer": acts.layer,
            "untrained_model": bool(acts.meta.get("untrained", False)),
            "architecture": settings["architecture"],
            "d_in": acts.d_in,
            "d_sae": d_sae,
            "expansion_factor": settings["expansion_factor"],
            "k": settings["k"] if settings["architecture"] == "topk" else None,
            "l1_coefficient": settings["l1_coefficient"] if settings["architecture"] == "standard" else None,
            "seed": seed,
            "training_tokens": int(result.history["tokens"].iloc[-1]),
            "training_steps": len(result.history),
            "epochs": float(result.history["tokens"].iloc[-1]) / max(train_rows.size, 1),
            "final_loss": float(result.history["loss"].iloc[-1]),
            "train_seconds": result.seconds,
            "tokens_per_second": result.tokens_per_second,
            "device": str(device),
            **metrics,
        }
        write_json(metrics, out["metrics"])
        result.history.to_csv(out["history"], sep="\t", index=False)
        plot_training(result.history, result.log_feature_sparsity, frequency, out["curve"])
    if args.checkpoints and Path(args.checkpoints).is_dir():
        import shutil

        shutil.rmtree(args.checkpoints)  # the run is complete; nothing to resume
    log.info("L0 %.2f, FVE %.3f, MSE %.4g, dead %d, dense %d", metrics["l0"], metrics["fraction_variance_explained"],
             metrics["mse"], metrics["dead_features"], metrics["dense_features"])


if __name__ == "__main__":
    cli.run(main)
