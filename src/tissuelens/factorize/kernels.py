"""Covariance functions: Matérn-3/2 (gpytorch) and the multi-group Matérn-3/2 (MGGP) kernel.

Inputs of the MGGP kernel are spatial columns followed by one column holding the integer group code
(as a float), so that gpytorch's variational strategies can carry groups with the inducing points.
"""

from __future__ import annotations

import math

import gpytorch
import numpy as np
import torch


def group_sqdist(n_groups: int, distances: np.ndarray | None = None) -> torch.Tensor:
    """Squared distances between group embeddings from classical MDS of a group distance matrix.

    The default distance matrix is all ones off the diagonal (equidistant groups), for which the
    embedding reproduces d² = 1 between different groups exactly.
    """
    d = np.ones((n_groups, n_groups)) - np.eye(n_groups) if distances is None else np.asarray(distances, float)
    centre = np.eye(n_groups) - 1.0 / n_groups
    gram = -0.5 * centre @ (d**2) @ centre
    vals, vecs = np.linalg.eigh(gram)
    keep = vals > 1e-10
    emb = vecs[:, keep] * np.sqrt(vals[keep])
    sq = ((emb[:, None, :] - emb[None, :, :]) ** 2).sum(-1)
    return torch.as_tensor(sq, dtype=torch.float32)


class MGGPMatern32Kernel(gpytorch.kernels.Kernel):
    """k((x,c),(x',c')) = (1 + r̃) e^{−r̃} ν^{(3+p)/2},  ν = 1/(δ d²_cc' + 1),  r̃ = √3 ‖x−x'‖ √ν / ℓ.

    Cross-group covariance is weaker (amplitude ν^{(3+p)/2}) and flatter (lengthscale ℓ/√ν);
    δ → 0 gives one shared Matérn-3/2 GP, δ → ∞ independent GPs per group. σ = 1 as in the reference.
    """

    has_lengthscale = True

    def __init__(self, n_groups: int, group_diff: float = 1.0, distances=None, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("group_sq", group_sqdist(n_groups, distances))
        self.register_buffer("group_diff", torch.tensor(float(group_diff)))

    def forward(self, x1, x2, diag: bool = False, last_dim_is_batch: bool = False, **params):
        s1, s2 = x1[..., :-1], x2[..., :-1]
        g1, g2 = x1[..., -1].round().long(), x2[..., -1].round().long()
        ls = self.lengthscale  # (*batch, 1, 1)
        p = s1.shape[-1]
        if diag:
            r = torch.linalg.vector_norm(s1 - s2, dim=-1) / ls[..., 0]
            d2 = self.group_sq[g1, g2]
        else:
            r = self.covar_dist(s1 / ls, s2 / ls, **params)
            d2 = self.group_sq[g1.unsqueeze(-1), g2.unsqueeze(-2)]
        nu = 1.0 / (self.group_diff.abs() * d2 + 1.0)
        rt = math.sqrt(3.0) * r * nu.sqrt()
        return (1.0 + rt) * torch.exp(-rt) * nu.pow((3.0 + p) / 2.0)


def make_kernel(lengthscale: float, n_groups: int | None = None, group_diff: float = 1.0, trainable: bool = False):
    """Matérn-3/2 with σ = 1 (no ScaleKernel); the MGGP version when `n_groups` is given."""
    if n_groups is None:
        kernel = gpytorch.kernels.MaternKernel(nu=1.5)
    else:
        kernel = MGGPMatern32Kernel(n_groups, group_diff)
    kernel.lengthscale = lengthscale
    kernel.raw_lengthscale.requires_grad_(trainable)
    return kernel


def dense(kernel, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Evaluate a kernel block as a plain tensor (supports leading batch dims)."""
    return kernel(x1, x2).to_dense()


def diagonal(kernel, x: torch.Tensor) -> torch.Tensor:
    return kernel(x, x, diag=True)
