"""Training loop: minibatches of cells and genes, Adam (+ one-cycle), a plateau stop, checkpoints.

Kernel hyperparameters (amplitudes, lengthscales, MGGP δ) have their own Adam at learning_rate ×
kernel_lr_multiplier, stepped every kernel_every iterations (NSF keeps them in their own optimiser).
Loadings under the multiplicative update take a damped step towards each minibatch's fixed point, and a
final pass over all cells and genes refits W with q fixed, so W does not carry the last batches' noise.

All randomness (minibatches, Monte Carlo noise) comes from one CPU torch.Generator whose state is
checkpointed with the model, optimiser and scheduler, so a resumed run continues bit for bit on CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tissuelens.errors import InputError
from tissuelens.factorize.data import CountBatches, FactorData
from tissuelens.factorize.elbo import expected_loglik, loadings_fixed_point, multiplicative_update
from tissuelens.factorize.kernels import FactorKernel
from tissuelens.factorize.model import FactorModel
from tissuelens.io import atomic_path
from tissuelens.progress import Progress

log = logging.getLogger(__name__)
CHECKPOINT_VERSION = 3  # 3: svgp q(u) in u-space
# settings that do not change the numbers a run produces
NOT_FINGERPRINTED = {"enabled", "variants", "checkpoint_every", "resume", "device", "chunk_size", "analysis", "log_every",
                     "time_budget_minutes"}
# the iterations a run at the defaults is costed at before it goes on: its plateau came at 100-450 iterations
# on the benchmarks (docs/benchmarks.md), so a run that would take longer than the budget says so within a minute
COSTED_ITERATIONS = 500
# what makes each variant's step cheaper, for the time-budget error
CHEAPER = {
    "pnmf": "a smaller batch_size or gene_batch_size",
    "svgp": "fewer inducing points (n_inducing) or a smaller batch_size",
    "lcgp": "fewer n_neighbors (and lcgp_rank) or a smaller batch_size; or svgp",
}


@dataclass
class TrainResult:
    history: list[float]
    iterations: int
    converged: str | None  # the stop rule that fired ("plateau" or "plateau_after_annealing"), None at max_iter
    seconds: float
    clamps: dict = field(default_factory=dict)
    loadings_pass: dict = field(default_factory=dict)


def fingerprint(variant: str, settings: dict, data: FactorData) -> str:
    core = {k: v for k, v in settings.items() if k not in NOT_FINGERPRINTED}
    core.update(variant=variant, n_train=len(data.train_idx), n_genes=data.n_genes,
                train_head=data.train_idx[:50].tolist(), genes=data.gene_names[:50].tolist(),
                sections=list(data.section_names))  # a checkpoint from another sectioning is refused by name
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def plateau(history: list[float], window: int, tol: float) -> bool:
    """Whether the ELBO has stopped improving: a least-squares line through the last `window` values
    gains at most tol × |their mean| over the window.

    A fitted line is robust to minibatch and Monte Carlo noise: at a true plateau its estimated gain is
    ≤ 0 about half the time, so the rule fires soon, where comparing two noisy window means (|Δ| ≤ tol)
    may never fire. Needs 2 windows of history, so a run's early transients do not count.
    """
    if tol <= 0 or len(history) < 2 * window or window < 3:
        return False
    y = np.asarray(history[-window:], dtype=np.float64)
    t = np.arange(window) - (window - 1) / 2
    gain = float(t @ (y - y.mean()) / (t @ t)) * window
    return gain <= tol * abs(y.mean())


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, expected: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise InputError(f"{path}: corrupt checkpoint ({type(exc).__name__}); delete it or set resume: false") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise InputError(f"{path}: not a tissuelens factorize checkpoint (version mismatch); delete it or set resume: false")
    if state.get("fingerprint") != expected:
        raise InputError(
            f"{path}: checkpoint was written with other settings or data (fingerprint {state.get('fingerprint')} "
            f"!= {expected}); delete it or set resume: false"
        )
    return state


def _advance(sched) -> None:
    if sched is not None and sched.last_epoch < sched.total_steps - 1:
        sched.step()


class Trainer:
    def __init__(self, model: FactorModel, data: FactorData, settings: dict, variant: str, device: torch.device):
        self.model, self.data, self.settings, self.device = model.to(device), data, settings, device
        self.variant = variant
        self.fingerprint = fingerprint(variant, settings, data)
        n, d = len(data.train_idx), data.n_genes
        self.clamps = {}
        self.batch = self._clamp("batch_size", n)
        self.gene_batch = self._clamp("gene_batch_size", d)
        self.counts = CountBatches(data.counts[data.train_idx], device)
        self.nu = torch.as_tensor(data.size_factors[data.train_idx], dtype=torch.float32, device=device)
        self.gen = torch.Generator().manual_seed(settings["seed"])
        kernel_ids = {id(p) for m in model.modules() if isinstance(m, FactorKernel) for p in m.parameters()}
        params = [p for p in model.parameters() if p.requires_grad and id(p) not in kernel_ids]
        self.kernel_params = [p for p in model.parameters() if p.requires_grad and id(p) in kernel_ids]
        self.opt = torch.optim.Adam(params, lr=settings["learning_rate"])
        kernel_lr = settings["learning_rate"] * settings["kernel_lr_multiplier"]
        self.kernel_opt = torch.optim.Adam(self.kernel_params, lr=kernel_lr) if self.kernel_params else None
        self.sched = self.kernel_sched = None
        if settings["lr_schedule"] == "one_cycle":
            self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=settings["learning_rate"],
                                                             total_steps=max(settings["max_iter"], 2))
            if self.kernel_opt is not None:
                steps = max(math.ceil(settings["max_iter"] / settings["kernel_every"]), 2)
                self.kernel_sched = torch.optim.lr_scheduler.OneCycleLR(self.kernel_opt, max_lr=kernel_lr, total_steps=steps)
        # damped multiplicative step: the share of the data one minibatch sees (1 for full batches)
        step = settings["loadings_step"]
        self.loadings_step = step if step is not None else self.batch / n
        self.history: list[float] = []
        self.iteration = 0

    def _clamp(self, key: str, size: int) -> int:
        want = self.settings[key]
        if want is None or want >= size:
            if want is not None and want > size:
                log.info("%s=%d clamped to %d", key, want, size)
                self.clamps[key] = size
            return size
        return want

    def _sample(self, size: int, total: int) -> torch.Tensor:
        return torch.arange(total) if size >= total else torch.randperm(total, generator=self.gen)[:size]

    def step(self) -> float:
        s, data = self.settings, self.data
        n, d, L = len(data.train_idx), data.n_genes, self.model.n_factors
        cells, genes = self._sample(self.batch, n), self._sample(self.gene_batch, d)
        eps = None
        if s["ell"] == "expanded":
            eps = torch.randn(s["mc_samples"], len(cells), L, generator=self.gen).to(self.device)
        cells_d, genes_d = cells.to(self.device), genes.to(self.device)
        # steps that leave the kernel alone take no kernel gradient: no backward through the kernel's
        # factorisations (the costliest part of a GP step's backward pass)
        stepping_kernel = self.kernel_opt is not None and self.iteration % s["kernel_every"] == 0
        for p in self.kernel_params:
            p.requires_grad_(stepping_kernel)
        y = self.counts.batch(cells, genes)
        nu = self.nu[cells_d]
        prior = self.model.prior
        mu, var = prior.marginals(cells_d)
        multiplicative = s["loadings_update"] == "multiplicative"
        w = self.model.w[genes_d]
        out = expected_loglik(y, w, mu, var, nu, eps, want_update=multiplicative)
        ell, num = out if multiplicative else (out, None)
        kl = prior.kl(cells_d, n, s["kl_scaling"])
        loss = kl - ell * (n / len(cells)) * (d / len(genes))
        value = loss.item()
        if not math.isfinite(value):
            raise InputError(
                f"factorize: ELBO became {value} at iteration {self.iteration + 1}; lower learning_rate or check the counts"
            )
        self.opt.zero_grad(set_to_none=True)
        if self.kernel_opt is not None:
            self.kernel_opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in self.kernel_params:
            p.requires_grad_(True)
        self.opt.step()
        _advance(self.sched)
        if stepping_kernel:
            self.kernel_opt.step()
            _advance(self.kernel_sched)
        if multiplicative:
            v = var.detach() if s["ell"] == "expanded" else torch.zeros_like(var)
            multiplicative_update(self.model.w, genes_d, num, mu.detach(), v, nu, self.loadings_step)
        else:
            with torch.no_grad():
                self.model.w.clamp_(min=1e-8)
        self.iteration += 1
        self.history.append(-value)
        return -value

    def annealed(self) -> bool:
        """One-cycle runs may stop only once the rate has decayed below 1 % of its peak (past the annealing
        phase's midpoint); stopping on a plateau at the peak rate would leave q unannealed."""
        if self.sched is None:
            return True
        return self.opt.param_groups[0]["lr"] <= 0.01 * self.settings["learning_rate"] and \
            self.sched.last_epoch > self.sched.total_steps * 0.3

    @torch.no_grad()
    def refit_loadings(self) -> dict:
        """W with q fixed, by the multiplicative fixed point over all training cells and genes (cells in
        chunks), from a generator seeded apart from training's so it does not depend on the minibatch path."""
        s, n = self.settings, len(self.data.train_idx)
        if s["final_loadings_iter"] == 0:
            return {}
        gen = torch.Generator().manual_seed(s["seed"] + 1)
        mu, var = self.model.prior.marginals(torch.arange(n, device=self.device))
        mu, var = mu.detach(), var.detach()
        chunks = [torch.arange(lo, min(lo + s["chunk_size"], n)) for lo in range(0, n, s["chunk_size"])]
        eps = None
        if s["ell"] == "expanded":  # one fixed set of draws for every sweep: a deterministic fixed-point map
            eps = torch.randn(s["mc_samples"], n, mu.shape[1], generator=gen).to(self.device)
        genes = torch.arange(self.data.n_genes)
        blocks = [(c, self.counts.batch(c, genes)) for c in chunks] if self.counts.dense is not None else None
        w, change, sweep = self.model.w, float("inf"), 0
        for sweep in range(1, s["final_loadings_iter"] + 1):
            parts = blocks if blocks is not None else ((c, self.counts.batch(c, genes)) for c in chunks)
            new = loadings_fixed_point(w, parts, mu, var, self.nu, eps, s["ell"] == "expanded")
            change = float(torch.linalg.vector_norm(new - w) / torch.linalg.vector_norm(w))
            w.copy_(new)
            if change <= s["final_loadings_tol"]:
                break
        log.info("loadings refit over all cells and genes: %d sweeps, last relative change %.2g", sweep, change)
        return {"sweeps": sweep, "relative_change": change}

    def state(self) -> dict:
        return {
            "version": CHECKPOINT_VERSION,
            "fingerprint": self.fingerprint,
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict() if self.sched else {},
            "kernel_optimizer": self.kernel_opt.state_dict() if self.kernel_opt else {},
            "kernel_scheduler": self.kernel_sched.state_dict() if self.kernel_sched else {},
            "generator": self.gen.get_state(),
            "history": torch.tensor(self.history, dtype=torch.float64),
        }

    def restore(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            if self.sched is not None:
                self.sched.load_state_dict(state["scheduler"])
            if self.kernel_opt is not None:
                self.kernel_opt.load_state_dict(state["kernel_optimizer"])
            if self.kernel_sched is not None:
                self.kernel_sched.load_state_dict(state["kernel_scheduler"])
            self.gen.set_state(state["generator"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise InputError(f"checkpoint does not match the model: {str(exc).splitlines()[0]}") from None
        self.iteration = int(state["iteration"])
        self.history = state["history"].tolist()

    def check_budget(self, seconds_per_step: float) -> None:
        """Log the cost of COSTED_ITERATIONS steps; over `time_budget_minutes`, one error line naming what to change."""
        minutes = seconds_per_step * COSTED_ITERATIONS / 60
        log.info("%s: %.2f s per iteration on %s, about %.0f min per %d iterations", self.variant, seconds_per_step,
                 self.device, minutes, COSTED_ITERATIONS)
        budget = self.settings["time_budget_minutes"]
        if budget is not None and minutes > budget:
            kind = "svgp" if self.variant.endswith("svgp") else "lcgp" if self.variant.endswith("lcgp") else "pnmf"
            raise InputError(
                f"factorize {self.variant}: {seconds_per_step:.2f} s per iteration on {self.device} "
                f"({len(self.data.train_idx):,} cells, {self.data.n_genes:,} genes, L={self.model.n_factors}) is about "
                f"{minutes:,.0f} min per {COSTED_ITERATIONS} iterations, over time_budget_minutes={budget:g}: set "
                f"{CHEAPER[kind]}, run it on a GPU (device: cuda), or raise time_budget_minutes")

    def fit(self, checkpoint: Path | None = None) -> TrainResult:
        s = self.settings
        if checkpoint is not None and s["resume"] and Path(checkpoint).exists():
            self.restore(load_checkpoint(Path(checkpoint), self.fingerprint))
            log.info("resumed from %s at iteration %d", checkpoint, self.iteration)
        start, converged = time.perf_counter(), None
        # the first kernel cycle (its kernel step and the cheaper ones after it) is timed for the budget check
        cycle = max(s["kernel_every"], 2)
        probe, probe_start = self.iteration + cycle, start
        bar = Progress(s["max_iter"] - self.iteration, f"factorize {self.variant}", logger=log)
        while self.iteration < s["max_iter"]:
            elbo = self.step()
            if self.iteration == probe:
                self.check_budget((time.perf_counter() - probe_start) / cycle)
            bar.update(1, f"ELBO {elbo:.6g}")
            if s["log_every"] and self.iteration % s["log_every"] == 0:
                log.info("iteration %d: ELBO %.6g", self.iteration, elbo)
            if self.annealed() and plateau(self.history, s["tol_window"], s["tol"]):
                converged = "plateau" if self.sched is None else "plateau_after_annealing"
                bar.finish(f"ELBO {elbo:.6g}")
                log.info("converged at iteration %d (stop rule: %s)", self.iteration, converged)
                break
            if checkpoint is not None and s["checkpoint_every"] and self.iteration % s["checkpoint_every"] == 0:
                save_checkpoint(Path(checkpoint), self.state())
        refit = self.refit_loadings()
        return TrainResult(self.history, self.iteration, converged, time.perf_counter() - start, self.clamps, refit)
