"""Reconstruction and sparsity metrics of a trained SAE on held-out tokens, and the training figure.

Definitions (accumulated in float64 over all evaluation tokens):

* L0: mean number of non-zero latents per token;
* FVE (fraction of variance explained, SAELens' formula): 1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2);
* MSE: mean squared error per element; `l2_loss`: per token, summed over dimensions (SAELens' training MSE);
* cosine: mean cosine similarity of x and x_hat;
* dead: latents never active on the evaluation tokens; dense: active on more than `dense_threshold` of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class ReconstructionStats:
    """Streaming accumulator of the metrics above."""

    def __init__(self, d_in: int, d_sae: int):
        self.n = 0
        self.sq_err = 0.0
        self.sq_norm = 0.0
        self.sum_x = np.zeros(d_in, dtype=np.float64)
        self.cosine = 0.0
        self.active = 0.0
        self.fired = np.zeros(d_sae, dtype=np.int64)

    def update(self, x: np.ndarray, x_hat: np.ndarray, feature_acts: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        x_hat = np.asarray(x_hat, dtype=np.float64)
        nz = np.asarray(feature_acts) != 0
        self.n += x.shape[0]
        self.sq_err += float(((x - x_hat) ** 2).sum())
        self.sq_norm += float((x**2).sum())
        self.sum_x += x.sum(axis=0)
        denom = np.linalg.norm(x, axis=1) * np.linalg.norm(x_hat, axis=1)
        cos = np.where(denom > 0, (x * x_hat).sum(axis=1) / np.where(denom > 0, denom, 1.0), 0.0)
        self.cosine += float(cos.sum())
        self.active += float(nz.sum())
        self.fired += nz.sum(axis=0)

    @property
    def frequency(self) -> np.ndarray:
        return self.fired / max(self.n, 1)

    def result(self, dense_threshold: float = 0.5) -> dict:
        n, d_in = max(self.n, 1), self.sum_x.size
        mean = self.sum_x / n
        total_var = self.sq_norm / n - float(mean @ mean)
        freq = self.frequency
        return {
            "n_eval_tokens": int(self.n),
            "l0": self.active / n,
            "fraction_variance_explained": 1.0 - (self.sq_err / n) / total_var if total_var > 0 else float("nan"),
            "mse": self.sq_err / (n * d_in),
            "l2_loss": self.sq_err / n,
            "cosine": self.cosine / n,
            "dead_features": int((self.fired == 0).sum()),
            "dead_fraction": float((self.fired == 0).mean()),
            "dense_features": int((freq > dense_threshold).sum()),
            "dense_threshold": float(dense_threshold),
        }


def encode_decode(sae, x: np.ndarray, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        acts = sae.encode(xt)
        x_hat = sae.decode(acts)
    return acts.float().cpu().numpy(), x_hat.float().cpu().numpy()


def evaluate(sae, array: np.ndarray, rows: np.ndarray, batch_size: int = 8192, device: str = "cpu",
             dense_threshold: float = 0.5) -> tuple[dict, np.ndarray]:
    """Metrics on `rows` of the memmap; also returns each latent's firing frequency."""
    from tissuelens.sae.activations import sequential_batches

    stats = ReconstructionStats(int(sae.cfg.d_in), int(sae.cfg.d_sae))
    sae.eval()
    for _, x in sequential_batches(array, rows, batch_size):
        acts, x_hat = encode_decode(sae, x, device)
        stats.update(x, x_hat, acts)
    return stats.result(dense_threshold), stats.frequency


def plot_training(history, log_sparsity: np.ndarray, eval_frequency: np.ndarray | None, path: str | Path) -> None:
    """Loss curve (total, MSE, sparsity/aux term) and the log10 feature-density histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dens) = plt.subplots(1, 2, figsize=(9, 3.4))
    steps = history["step"].to_numpy()
    ax_loss.plot(steps, history["loss"], label="total", lw=1.2)
    ax_loss.plot(steps, history["mse_loss"], label="MSE", lw=1)
    if (history["sparsity_loss"] > 0).any():
        ax_loss.plot(steps, history["sparsity_loss"], label="L1 / AuxK", lw=1)
    if len(history) and (history["loss"] > 0).all():
        ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("SAE training loss")
    ax_loss.legend(frameon=False, fontsize=8)
    freq = eval_frequency if eval_frequency is not None else 10.0 ** np.asarray(log_sparsity)
    logf = np.log10(np.clip(freq, 1e-7, None))
    ax_dens.hist(logf, bins=40, color="#4c72b0")
    ax_dens.set_xlabel("log10 firing frequency (eval tokens; dead at -7)")
    ax_dens.set_ylabel("latents")
    ax_dens.set_title("feature density")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
