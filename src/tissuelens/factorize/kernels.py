"""Covariance functions: a Matérn-3/2 per factor, and its multi-group (MGGP) form.

Each factor ℓ has its own amplitude a_ℓ and lengthscale ℓ_ℓ (softplus-constrained, as NSF), learned with
the kernel's own optimiser or frozen (`train_kernel: false`, the reference). Inputs of the MGGP kernel are
spatial columns followed by one column holding the integer group code (as a float), so that gpytorch's
variational strategies can carry groups with the inducing points.

Sections (a dataset's `section_key`): one more last column holds the section code, and the kernel is
multiplied by 1[same section], so covariance across sections is exactly zero: each section's factors are
independent GPs with the shared per-factor amplitude and lengthscale, and the loadings W stay shared, so a
factor means the same genes in every section. Inducing points carry their section the same way.
"""

from __future__ import annotations

import math

import gpytorch
import numpy as np
import torch
from torch import nn
from torch.nn.functional import softplus


def inverse_softplus(x: float) -> float:
    return float(x + math.log(-math.expm1(-x)))


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


class FactorKernel(gpytorch.kernels.Kernel):
    """k_ℓ(x, x') = a_ℓ (1 + r̃) e^{−r̃},  r̃ = √3 ‖x − x'‖ / ℓ_ℓ, one (a_ℓ, ℓ_ℓ) per factor.

    With `n_groups` (MGGP): k_ℓ((x,c),(x',c')) = a_ℓ (1 + r̃) e^{−r̃} ν^{(3+p)/2}, ν = 1/(δ d²_cc' + 1),
    r̃ = √3 ‖x−x'‖ √ν / ℓ_ℓ: cross-group covariance is weaker and flatter; δ → 0 gives one shared GP,
    δ → ∞ independent GPs per group. Outputs carry the factor as the leading batch dimension.
    """

    def __init__(self, n_factors: int, lengthscale: float, amplitude: float = 1.0, train: bool = True,
                 n_groups: int | None = None, group_diff: float = 1.0, train_group_diff: bool = False,
                 length_unit: float = 1.0, sectioned: bool = False):
        super().__init__(batch_shape=torch.Size([n_factors]))
        self.sectioned = bool(sectioned)
        # lengthscale = length_unit · softplus(raw): with length_unit = spatial_scale the raw parameter lives in
        # NSF's box-of-side-4 units, so one Adam step moves a lengthscale by the same share of the tissue as
        # in NSF (softplus is linear above ~2: in model units a step of 0.01 would barely move ℓ = 20)
        self.length_unit = float(length_unit)
        self.raw_lengthscales = nn.Parameter(torch.full((n_factors,), inverse_softplus(lengthscale / self.length_unit)),
                                             requires_grad=train)
        self.raw_amplitudes = nn.Parameter(torch.full((n_factors,), inverse_softplus(amplitude)), requires_grad=train)
        self.n_groups = n_groups
        if n_groups is not None:
            self.register_buffer("group_sq", group_sqdist(n_groups))
            # δ = 0 (one shared GP) is allowed when frozen; a learned δ lives on softplus' open interval
            if train_group_diff:
                self.raw_group_diff = nn.Parameter(torch.tensor(inverse_softplus(group_diff)))
            else:
                self.register_buffer("fixed_group_diff", torch.tensor(float(group_diff)))

    @property
    def lengthscales(self) -> torch.Tensor:
        return self.length_unit * softplus(self.raw_lengthscales)

    @property
    def amplitudes(self) -> torch.Tensor:
        return softplus(self.raw_amplitudes)

    @property
    def group_diff(self) -> torch.Tensor:
        return softplus(self.raw_group_diff) if hasattr(self, "raw_group_diff") else self.fixed_group_diff

    def matrix(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, per_factor: bool = False) -> torch.Tensor:
        """(L, *batch, n, m), or (L, *batch, n) with `diag`, for inputs (*batch, n, d) and (*batch, m, d).
        With `per_factor` the inputs' leading dimension already is the factor's (as gpytorch passes them)."""
        if self.sectioned:  # 1[same section] x the kernel of the remaining columns
            c1, c2 = x1[..., -1].round(), x2[..., -1].round()
            same = (c1 == c2) if diag else (c1.unsqueeze(-1) == c2.unsqueeze(-2))
            out = self._matrix(x1[..., :-1], x2[..., :-1], diag, per_factor)
            return out * same.to(out.dtype)
        return self._matrix(x1, x2, diag, per_factor)

    def _matrix(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool, per_factor: bool) -> torch.Tensor:
        grouped = self.n_groups is not None
        s1, s2 = (x1[..., :-1], x2[..., :-1]) if grouped else (x1, x2)
        if diag:
            r = torch.linalg.vector_norm(s1 - s2, dim=-1)
        else:  # exact differences: the mm shortcut loses ~1e-2 at zero distance in float32 on ±100 coordinates
            r = torch.cdist(s1, s2, compute_mode="donot_use_mm_for_euclid_dist")
        shape = (-1,) + (1,) * (r.dim() - 1 if per_factor else r.dim())
        ls, amp = self.lengthscales.view(shape), self.amplitudes.view(shape)
        if not grouped:
            rt = math.sqrt(3.0) * r / ls
            return amp * (1.0 + rt) * torch.exp(-rt)
        g1, g2 = x1[..., -1].round().long(), x2[..., -1].round().long()
        d2 = self.group_sq[g1, g2] if diag else self.group_sq[g1.unsqueeze(-1), g2.unsqueeze(-2)]
        nu = 1.0 / (self.group_diff * d2 + 1.0)
        rt = math.sqrt(3.0) * r * nu.sqrt() / ls
        return amp * (1.0 + rt) * torch.exp(-rt) * nu.pow((3.0 + s1.shape[-1]) / 2.0)

    def forward(self, x1, x2, diag: bool = False, **params):
        # gpytorch expands inputs to the kernel's batch shape (L, n, d) before calling forward
        return self.matrix(x1, x2, diag, per_factor=x1.dim() > 2)


def make_kernel(settings: dict, n_factors: int, lengthscale: float, n_groups: int | None = None,
                sectioned: bool = False) -> FactorKernel:
    """The kernel a variant's settings ask for (`lengthscale` is the resolved initial value)."""
    return FactorKernel(n_factors, lengthscale, settings["amplitude"], settings["train_kernel"], n_groups,
                        settings["group_diff"], settings["train_group_diff"] and settings["train_kernel"],
                        length_unit=settings["spatial_scale"], sectioned=sectioned)


SECTION_SEPARATION = 1e6  # model units between sections in neighbour searches (the tissue spans ~4 x spatial_scale)


def search_space(x: np.ndarray, sectioned: bool) -> np.ndarray:
    """Kernel inputs as points for a nearest-neighbour search: x, y, and with sections the section code times
    SECTION_SEPARATION, so a cell's nearest cells are those of its own section."""
    x = np.asarray(x, dtype=np.float64)
    if not sectioned:
        return x[:, :2]
    return np.column_stack([x[:, :2], x[:, -1] * SECTION_SEPARATION])
