"""SAE training through SAELens 6: its training-SAE classes and `SAETrainer`, fed by our memmap stream.

The trained SAE is saved with `TrainingSAE.save_inference_model` (SAELens' on-disk format:
`cfg.json` + `sae_weights.safetensors`, plus `sparsity.safetensors` as SAELens checkpoints write it), so
`sae_lens.SAE.load_from_disk(path)` rebuilds it unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from tissuelens.errors import InputError
from tissuelens.progress import Progress

log = logging.getLogger(__name__)

HISTORY_COLUMNS = ("step", "tokens", "loss", "mse_loss", "sparsity_loss", "l0", "lr", "seconds")


def build_training_sae(settings: dict, d_in: int, device: str = "cpu", metadata: dict | None = None):
    """A fresh SAELens training SAE (TopKTrainingSAE or StandardTrainingSAE) for `settings`."""
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_sae = int(settings["expansion_factor"]) * int(d_in)
    common = dict(
        d_in=int(d_in),
        d_sae=d_sae,
        dtype="float32",
        device=str(device),
        apply_b_dec_to_input=True,
        normalize_activations=settings["normalize_activations"],
        metadata=SAEMetadata(**(metadata or {})),
    )
    if settings["architecture"] == "topk":
        cfg = TopKTrainingSAEConfig(
            k=int(settings["k"]),
            aux_loss_coefficient=float(settings["aux_loss_coefficient"]),
            rescale_acts_by_decoder_norm=True,
            decoder_init_norm=0.1,
            **common,
        )
        return TopKTrainingSAE(cfg)
    cfg = StandardTrainingSAEConfig(
        l1_coefficient=float(settings["l1_coefficient"]),
        l1_warm_up_steps=int(settings["l1_warm_up_steps"]),
        lp_norm=1.0,
        decoder_init_norm=0.1,
        **common,
    )
    return StandardTrainingSAE(cfg)


def trainer_config(settings: dict, device: str, checkpoint_dir: str | Path | None = None):
    """SAETrainerConfig with every field given explicitly (older 6.x releases have no defaults)."""
    from sae_lens import LoggingConfig
    from sae_lens.config import SAETrainerConfig

    total = int(settings["training_tokens"])
    batch = int(settings["batch_size"])
    values = dict(
        total_training_samples=total,
        train_batch_size_samples=batch,
        lr=float(settings["lr"]),
        lr_end=float(settings["lr"]) / 10,
        lr_scheduler_name=settings["lr_scheduler"],
        lr_warm_up_steps=int(settings["lr_warm_up_steps"]),
        lr_decay_steps=int(settings["lr_decay_steps"]),
        n_restart_cycles=1,
        adam_beta1=0.9,
        adam_beta2=0.999,
        device=str(device),
        autocast=False,
        dead_feature_window=int(settings["dead_feature_window"]),
        feature_sampling_window=max(1, total // batch + 1),  # one window: the sparsity of the whole run
        n_checkpoints=int(settings.get("n_checkpoints", 0)) if checkpoint_dir is not None else 0,
        checkpoint_path=str(checkpoint_dir) if checkpoint_dir is not None else None,
        save_final_checkpoint=False,
        logger=LoggingConfig(log_to_wandb=False, eval_every_n_wandb_logs=2**31 - 1),
        n_batches_for_norm_estimate=int(settings["n_batches_for_norm_estimate"]),
    )
    # 6.0-6.18 have no defaults and lack the later fields: pass every field the installed release knows
    known = {f.name for f in dataclasses.fields(SAETrainerConfig)}
    return SAETrainerConfig(**{k: v for k, v in values.items() if k in known})


def _recording_trainer_class():
    from sae_lens import SAETrainer

    class RecordingTrainer(SAETrainer):
        """SAETrainer that keeps the loss history and stops on a non-finite loss, naming the iteration."""

        where = "training"

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.history: list[tuple] = []
            self.started = time.perf_counter()

        def step(self, batch):
            out = super().step(batch)
            loss = float(out.loss.detach())
            if not math.isfinite(loss):
                raise InputError(
                    f"{self.where}: loss became {loss} at iteration {self.n_training_steps} "
                    "(lower sae.lr or check the activations)"
                )
            sparsity = sum(float(v.detach()) for k, v in out.losses.items() if k != "mse_loss")
            l0 = float((out.feature_acts != 0).float().sum(-1).mean())
            self.progress.update(1, f"loss {loss:.4g}, L0 {l0:.1f}")
            self.history.append(
                (
                    self.n_training_steps,
                    self.n_training_samples,
                    loss,
                    float(out.losses["mse_loss"].detach()),
                    sparsity,
                    l0,
                    float(self.optimizer.param_groups[0]["lr"]),
                    time.perf_counter() - self.started,
                )
            )
            return out

    return RecordingTrainer


@dataclass
class TrainResult:
    sae: object  # the trained sae_lens TrainingSAE
    history: pd.DataFrame
    log_feature_sparsity: np.ndarray  # log10 firing frequency per latent over the run
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        tokens = float(self.history["tokens"].iloc[-1]) if len(self.history) else 0.0
        return tokens / self.seconds if self.seconds > 0 else float("nan")


def fit(sae, batches: Iterator, settings: dict, device: str, where: str = "training",
        checkpoint_dir: str | Path | None = None, run_identity: dict | None = None) -> TrainResult:
    """Train `sae` with SAELens' SAETrainer on `batches` (an endless iterator of (batch, d_in) tensors).

    With `checkpoint_dir` and `settings["n_checkpoints"] > 0`, SAELens writes evenly spaced checkpoints
    there; a later call with the same settings resumes from the newest complete one (weights, optimizer,
    schedulers, activation scaler, loss history) and fast-forwards `batches` (which must have a
    `skip(n)` method, as ShuffledBatches does) so the run continues exactly where it stopped.
    `run_identity` (seed, data file, ...) must also match for a checkpoint to be used.
    """
    if int(settings["training_tokens"]) < int(settings["batch_size"]):
        raise InputError(
            f"{where}: training_tokens {settings['training_tokens']} is smaller than batch_size {settings['batch_size']}"
        )
    trainer_cls = _recording_trainer_class()
    fingerprint = _fingerprint(settings, run_identity)

    def on_checkpoint(checkpoint_path: Path | None) -> None:
        if checkpoint_path is None:
            return
        pd.DataFrame(trainer.history, columns=list(HISTORY_COLUMNS)).to_csv(checkpoint_path / "history.tsv",
                                                                             sep="\t", index=False)
        (checkpoint_path / COMPLETE).write_text(fingerprint)  # written last: marks a usable checkpoint
        for old in _checkpoints(Path(checkpoint_path).parent):
            if old != checkpoint_path:
                shutil.rmtree(old, ignore_errors=True)

    trainer = trainer_cls(cfg=trainer_config(settings, device, checkpoint_dir), sae=sae, data_provider=batches,
                          save_checkpoint_fn=on_checkpoint)
    trainer.where = where
    resume = latest_checkpoint(checkpoint_dir, fingerprint) if checkpoint_dir is not None else None
    if resume is not None:
        sae.load_weights_from_checkpoint(resume)
        trainer.load_trainer_state(resume)
        # SAELens checkpoints before counting the step that triggered them; the samples are exact
        trainer.n_training_steps = trainer.n_training_samples // int(settings["batch_size"])
        trainer.history = [tuple(r) for r in pd.read_csv(resume / "history.tsv", sep="\t").itertuples(index=False)]
        trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t >= trainer.n_training_samples]
        consumed = trainer.n_training_steps
        if settings["normalize_activations"] == "expected_average_only_in":
            consumed += int(settings["n_batches_for_norm_estimate"])
        batches.skip(consumed)
        log.info("%s: resuming from %s (step %d)", where, resume, trainer.n_training_steps)
    trainer.progress = Progress(int(settings["training_tokens"]) // int(settings["batch_size"]) - trainer.n_training_steps,
                                f"SAE {where}", unit="steps", logger=log)
    trainer.started = time.perf_counter()
    if trainer.history:
        trainer.started -= trainer.history[-1][-1]  # elapsed seconds keep counting from the checkpoint
    trained = trainer.fit()
    seconds = time.perf_counter() - trainer.started  # includes the time before a resumed checkpoint
    history = pd.DataFrame(trainer.history, columns=list(HISTORY_COLUMNS))
    return TrainResult(trained, history, trainer.log_feature_sparsity.numpy(), seconds)


COMPLETE = "checkpoint_complete"


def _fingerprint(settings: dict, run_identity: dict | None = None) -> str:
    """Settings (and data, seed) that shape the run; a checkpoint resumes only a run with the same ones."""
    ignore = {"device", "n_checkpoints", "analysis_batch_size", "top_genes", "min_gene_tokens", "top_cells",
              "moran_neighbors", "dashboard_features", "models", "enabled", "link_factors", "eval_tokens",
              "dense_threshold"}
    shaping = {k: v for k, v in sorted(settings.items()) if k not in ignore}
    return json.dumps({"settings": shaping, "run": run_identity or {}}, sort_keys=True, default=str)


def _checkpoints(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
    return sorted(found, key=lambda p: int(p.name))


def latest_checkpoint(directory: str | Path, fingerprint: str) -> Path | None:
    """Newest complete checkpoint written with the same settings (None: start afresh)."""
    for path in reversed(_checkpoints(Path(directory))):
        marker = path / COMPLETE
        if marker.is_file() and marker.read_text() == fingerprint:
            return path
    return None


def seed_everything(seed: int) -> None:
    import torch

    torch.manual_seed(int(seed))
    np.random.seed(int(seed) % 2**32)


def train_on_activations(acts, train_rows: np.ndarray, settings: dict, seed: int, device: str,
                         checkpoint_dir: str | Path | None = None) -> TrainResult:
    """Build and fit an SAE on the memmapped layer of `acts` (an ActivationSet), streaming `train_rows`."""
    from tissuelens.sae.activations import ShuffledBatches

    seed_everything(seed)
    metadata = {
        "model_name": acts.model,
        "hook_name": f"layer_{acts.layer}",
        "layer": acts.layer,
        "untrained_model": bool(acts.meta.get("untrained", False)),
        "include_special_tokens": bool(settings["include_special_tokens"]),
        "seed": int(seed),
    }
    sae = build_training_sae(settings, acts.d_in, device=device, metadata=metadata)
    batches = ShuffledBatches(acts.array, train_rows, settings["batch_size"], seed=seed, device=str(device))
    stat = acts.path.stat()
    identity = {"seed": int(seed), "data": str(acts.path.resolve()), "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns, "train_rows": int(len(train_rows))}
    return fit(sae, batches, settings, device, where=str(acts.path), checkpoint_dir=checkpoint_dir,
               run_identity=identity)


def save_sae(result: TrainResult, directory: str | Path) -> Path:
    """Write the SAE in SAELens' format (inference weights and cfg) plus the run's feature sparsity."""
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    result.sae.save_inference_model(directory)
    save_file({"sparsity": torch.from_numpy(np.ascontiguousarray(result.log_feature_sparsity))},
              directory / "sparsity.safetensors")
    return directory


def load_sae(directory: str | Path, device: str = "cpu"):
    """Load a saved SAE with SAELens' own loader."""
    from sae_lens import SAE

    directory = Path(directory)
    if not (directory / "cfg.json").is_file() or not (directory / "sae_weights.safetensors").is_file():
        raise InputError(f"{directory}: not a SAELens SAE directory (cfg.json and sae_weights.safetensors)")
    return SAE.load_from_disk(str(directory), device=str(device))
