"""`pnmf`: independent normal prior on every log-factor, N(m_l, s_l²) with a location and scale per factor
learned with the variational parameters (NSF's non-spatial model); q(F_li) = N(μ_li, σ²_li).
With `train_kernel: false` the prior stays at N(0, 1) (the reference)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import softplus

from tissuelens.factorize.kernels import inverse_softplus


def kl_normal(mu: torch.Tensor, var: torch.Tensor, loc=0.0, scale=1.0) -> torch.Tensor:
    """Elementwise KL(N(μ, σ²) || N(m, s²)) = log(s/σ) + (σ² + (μ − m)²)/(2s²) − ½."""
    scale = torch.as_tensor(scale, dtype=mu.dtype, device=mu.device)
    return torch.log(scale) - 0.5 * torch.log(var) + (var + (mu - loc) ** 2) / (2 * scale**2) - 0.5


class PNMFPrior(nn.Module):
    kind = "pnmf"

    def __init__(self, n_factors: int, n_cells: int, log_factors: torch.Tensor, learn_prior: bool = True):
        super().__init__()
        self.mean = nn.Parameter(log_factors.T.clone().float())  # (L, N)
        self.raw_scale = nn.Parameter(torch.full((n_factors, n_cells), -2.2))  # softplus(−2.2) ≈ 0.105
        # initial prior: the log-factors' own per-factor mean and spread (NSF starts it at the NMF init's mean)
        loc = log_factors.float().mean(0)
        spread = log_factors.float().std(0).clamp_min(0.1) if log_factors.shape[0] > 1 else torch.ones(n_factors)
        if not learn_prior:
            loc, spread = torch.zeros(n_factors), torch.ones(n_factors)
        self.prior_loc = nn.Parameter(loc.clone(), requires_grad=learn_prior)
        self.raw_prior_scale = nn.Parameter(
            torch.tensor([inverse_softplus(float(v)) for v in spread]), requires_grad=learn_prior)

    @property
    def prior_scale(self) -> torch.Tensor:
        return softplus(self.raw_prior_scale)

    def marginals(self, idx: torch.Tensor):
        """(μ, σ²), each (B, L), of the training cells `idx`."""
        return self.mean[:, idx].T, softplus(self.raw_scale[:, idx]).pow(2).T

    def kl(self, idx: torch.Tensor, n_total: int, kl_scaling: str) -> torch.Tensor:
        mu, var = self.marginals(idx)
        return kl_normal(mu, var, self.prior_loc, self.prior_scale).sum() * (n_total / len(idx))

    @torch.no_grad()
    def predict(self, x, g, train_pos: torch.Tensor, chunk_size: int):
        """Training cells get q(F); other cells the learned prior N(m, s²) (no location to borrow from)."""
        n, L = len(train_pos), self.mean.shape[0]
        mu = self.prior_loc.expand(n, L).clone()
        var = self.prior_scale.pow(2).expand(n, L).clone()
        seen = train_pos >= 0
        mu[seen], var[seen] = self.marginals(train_pos[seen])
        return mu, var
