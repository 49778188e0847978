"""Expected Poisson log-likelihood of y ~ Poisson(ν Σ_l W_dl e^{F_l}) under q(F) = N(μ, σ²) marginals.

E log p = y·E[log Σ_l W e^F] (Monte Carlo, or Jensen's lower bound log Σ W e^μ) + y log ν
          − ν Σ_l W e^{μ+σ²/2} (exact lognormal mean) − log Γ(y+1).
Blocks are cell-major: y (B, G), μ and σ² (B, L), W (G, L), ν (B,), ε (E, B, L).
"""

from __future__ import annotations

import torch

RATE_FLOOR = 1e-8


def expected_loglik(y, w, mu, var, nu, eps=None, want_update: bool = False):
    """Sum over the block of E_q log p(y | F). With want_update also return the multiplicative-update
    numerator (G, L) from the same samples: mean_e Σ_i (y / rate_e) ν e^{F_e}."""
    sd = var.sqrt()
    log_nu = torch.log(nu)
    term2 = (nu.unsqueeze(-1) * torch.exp(mu + var / 2)) @ w.sum(0)  # (B,)
    samples = [mu] if eps is None else [mu + sd * e for e in eps]  # one (B,L) at a time: no (E,B,G) buffer
    term1 = 0.0
    num = torch.zeros_like(w) if want_update else None
    for f in samples:
        ef = torch.exp(f)
        rate = ef @ w.T  # (B,G), without ν (it cancels inside the log-sum)
        term1 = term1 + (y * torch.log(rate.clamp_min(RATE_FLOOR))).sum()
        if want_update:
            with torch.no_grad():
                num += (y / (rate + RATE_FLOOR)).T @ ef.detach()
    term1 = term1 / len(samples)
    const = (y.sum(1) * log_nu).sum() - torch.lgamma(y + 1).sum()
    ell = term1 - term2.sum() + const
    if want_update:
        return ell, num / len(samples)
    return ell


@torch.no_grad()
def multiplicative_update(w, genes, num, mu, var, nu, step: float = 1.0) -> None:
    """Lee–Seung (Poisson) fixed point for the sampled genes, W ← W · (num / Σ_i ν_i e^{μ+σ²/2})^step.

    step = 1 jumps to the minibatch's fixed point (the reference); step < 1 moves part of the way in
    log space, so one minibatch's noise is averaged over the following ones."""
    den = (nu.unsqueeze(-1) * torch.exp(mu + var / 2)).sum(0)  # (L,)
    ratio = (num / (den + RATE_FLOOR)).clamp_min(RATE_FLOOR)
    w[genes] = (w[genes] * (ratio if step == 1.0 else ratio.pow(step))).clamp_min(RATE_FLOOR)


@torch.no_grad()
def loadings_fixed_point(w, blocks, mu, var, nu, eps, expanded: bool) -> torch.Tensor:
    """One multiplicative sweep over all cells and genes with q fixed: blocks yields (cell indices, counts
    (B, D)); eps (E, N, L) the fixed Monte Carlo draws (None: the posterior mean, as `lower_bound`)."""
    num = torch.zeros_like(w)
    den = torch.zeros(w.shape[1], device=w.device, dtype=w.dtype)
    for cells, y in blocks:
        m, v, n = mu[cells], var[cells], nu[cells]
        draws = [m] if eps is None else [m + v.sqrt() * e[cells] for e in eps]
        for f in draws:
            ef = torch.exp(f)
            num += (y / (ef @ w.T + RATE_FLOOR)).T @ ef / len(draws)
        den += (n.unsqueeze(-1) * torch.exp(m + (v / 2 if expanded else 0.0))).sum(0)
    return (w * num / (den + RATE_FLOOR)).clamp_min(RATE_FLOOR)

