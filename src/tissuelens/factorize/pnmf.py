"""`pnmf`: independent N(0, 1) prior on every log-factor entry; q(F_li) = N(μ_li, σ²_li)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import softplus


def kl_normal_std(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(μ, σ²) || N(0, 1)) = ½(σ² + μ² − 1 − log σ²)."""
    return 0.5 * (var + mu**2 - 1.0 - torch.log(var))


class PNMFPrior(nn.Module):
    kind = "pnmf"

    def __init__(self, n_factors: int, n_cells: int, log_factors: torch.Tensor):
        super().__init__()
        self.mean = nn.Parameter(log_factors.T.clone().float())  # (L, N)
        self.raw_scale = nn.Parameter(torch.full((n_factors, n_cells), -2.2))  # softplus(−2.2) ≈ 0.105

    def marginals(self, idx: torch.Tensor):
        """(μ, σ²), each (B, L), of the training cells `idx`."""
        return self.mean[:, idx].T, softplus(self.raw_scale[:, idx]).pow(2).T

    def kl(self, idx: torch.Tensor, n_total: int, kl_scaling: str) -> torch.Tensor:
        mu, var = self.marginals(idx)
        return kl_normal_std(mu, var).sum() * (n_total / len(idx))

    @torch.no_grad()
    def predict(self, x, g, train_pos: torch.Tensor, chunk_size: int):
        """Training cells get q(F); other cells the prior N(0, 1) (no location to borrow from)."""
        n, L = len(train_pos), self.mean.shape[0]
        mu = torch.zeros(n, L, device=self.mean.device)
        var = torch.ones(n, L, device=self.mean.device)
        seen = train_pos >= 0
        mu[seen], var[seen] = self.marginals(train_pos[seen])
        return mu, var
