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
def multiplicative_update(w, genes, num, mu, var, nu) -> None:
    """Lee–Seung (Poisson) fixed point for the sampled genes: W ← W · num / Σ_i ν_i e^{μ+σ²/2}."""
    den = (nu.unsqueeze(-1) * torch.exp(mu + var / 2)).sum(0)  # (L,)
    w[genes] = (w[genes] * num / (den + RATE_FLOOR)).clamp_min(RATE_FLOOR)

