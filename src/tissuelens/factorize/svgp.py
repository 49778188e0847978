"""`svgp` / `mggp_svgp`: L sparse variational GPs, one kernel and constant mean per factor (gpytorch).

q(u_ℓ) = N(m_ℓ, Lu_ℓ Lu_ℓᵀ) in u-space (gpytorch's unwhitened strategy, as NSF and the spec parameterise
it) at fixed inducing points Z (k-means, plus their group column for MGGP); p(u_ℓ) = N(β_ℓ, K_ℓ + jitter·I),
K_ℓ = L_ℓ L_ℓᵀ. With A = L⁻¹K_ZX, b = L⁻¹(m − β) and C = L⁻¹Lu, the marginals of f at x are

    μ = β + Aᵀb,   σ² = k_xx − ‖A_x‖² + ‖(AᵀC)_x‖²,   KL = ½ Σ_ℓ [‖C‖² + ‖b‖² − M + log|K| − log|Lu Luᵀ|].

These closed forms are computed here from the strategy's parameters rather than through gpytorch's call,
which forms the kernel over [Z; X], switches to conjugate gradients above 800 inducing points and gives
its KL a different jitter (1e-3) from its predictions; a test checks them against gpytorch's own call.
A cell sitting on an inducing point has f = u there, so its marginal is read off q(u) directly (μ = m_j,
σ² = ‖(Lu)_j‖², as gpytorch's strategy does for x = Z): with inducing points at every training location
(n_inducing at or above their number, the default on datasets up to that size) the likelihood involves
no kernel at all and only the KL factorises K. The KL is global, so the minibatch ELBO needs it once
(×N/M only in reference mode).
"""

from __future__ import annotations

import gpytorch
import torch
from gpytorch.variational import CholeskyVariationalDistribution, UnwhitenedVariationalStrategy


class SVGPPrior(gpytorch.models.ApproximateGP):
    kind = "svgp"

    def __init__(self, inducing: torch.Tensor, n_factors: int, kernel, jitter: float, learn_mean: bool = False):
        m = inducing.shape[0]
        dist = CholeskyVariationalDistribution(m, batch_shape=torch.Size([n_factors]))
        strategy = UnwhitenedVariationalStrategy(self, inducing, dist, learn_inducing_locations=False, jitter_val=jitter)
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ConstantMean(batch_shape=torch.Size([n_factors]))
        self.mean_module.raw_constant.requires_grad_(learn_mean)  # frozen at 0: the reference's zero mean
        self.covar_module = kernel
        self.register_buffer("train_inputs", torch.empty(0))  # set by set_inputs
        self.cell_rows: torch.Tensor | None = None  # each training cell's inducing row, when all have one
        self._memo = None
        self._kernel_cache = None

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    @property
    def kernel(self):
        return self.covar_module

    @property
    def inducing(self) -> torch.Tensor:
        return self.variational_strategy.inducing_points

    def set_inputs(self, x: torch.Tensor) -> None:
        """Kernel inputs of the training cells (coordinates, plus group column for MGGP)."""
        self.train_inputs = x
        self.cell_rows = inducing_rows(self.inducing, x)

    def init_variational(self, mean: torch.Tensor, chol: torch.Tensor) -> None:
        """Set q(u): mean (L, M) and lower Cholesky factor (L, M, M) of its covariance, and stop gpytorch
        re-initialising it."""
        dist = self.variational_strategy._variational_distribution
        with torch.no_grad():
            dist.variational_mean.copy_(mean)
            dist.chol_variational_covar.copy_(chol)
        self.variational_strategy.variational_params_initialized.fill_(1)

    def _q(self):
        """(m (L, M), raw Cholesky (L, M, M), β (L,)); the Cholesky's upper triangle is not used."""
        dist = self.variational_strategy._variational_distribution
        return dist.variational_mean, dist.chol_variational_covar, self.mean_module.constant

    def _kernel_factor(self) -> torch.Tensor:
        """L = chol(K + jitter·I) (L, M, M). Steps that leave the kernel alone (kernel_every > 1) take no
        kernel gradient, so they reuse the last factor, as NSF caches its Kuu_chol between kernel updates."""
        params = list(self.kernel.parameters())
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in params)
        key = tuple((p.data_ptr(), p._version) for p in params)
        if not needs_grad and self._kernel_cache is not None and self._kernel_cache[0] == key:
            return self._kernel_cache[1]
        z = self.inducing
        with torch.set_grad_enabled(needs_grad):
            eye = torch.eye(len(z), device=z.device, dtype=z.dtype)
            chol_k = torch.linalg.cholesky(self.kernel.matrix(z, z) + self.variational_strategy.jitter_val * eye)
        self._kernel_cache = None if needs_grad else (key, chol_k)
        return chol_k

    def _whitened(self):
        """(L, b, C, Lu) of the current parameters. Kept from `marginals` for the `kl` of the same step, so a
        step solves against K once."""
        key = tuple((p.data_ptr(), p._version, p.requires_grad) for p in self.parameters()) + (torch.is_grad_enabled(),)
        if self._memo is not None and self._memo[0] == key:
            return self._memo[1]
        mean, raw_chol, beta = self._q()
        chol_k, lu = self._kernel_factor(), raw_chol.tril()
        b = torch.linalg.solve_triangular(chol_k, (mean - beta[:, None]).unsqueeze(-1), upper=False)
        c = solve_lower_by_lower(chol_k, lu)
        out = (chol_k, b.squeeze(-1), c, lu)
        self._memo = (key, out)
        return out

    def _marginals_at(self, x: torch.Tensor):
        """(μ, σ²) (B, L) at inputs x (B, d) from the general formula."""
        chol_k, b, c, _ = self._whitened()
        a = torch.linalg.solve_triangular(chol_k, self.kernel.matrix(self.inducing, x), upper=False)  # (L, M, B)
        mu = self.mean_module.constant[:, None] + (a * b.unsqueeze(-1)).sum(-2)
        var = self.kernel.matrix(x, x, diag=True) - a.pow(2).sum(-2) + (c.transpose(-1, -2) @ a).pow(2).sum(-2)
        return mu.T, var.clamp(1e-10, 100.0).T

    def marginals(self, idx: torch.Tensor):
        if self.cell_rows is None:
            return self._marginals_at(self.train_inputs[idx])
        rows = self.cell_rows.to(idx.device)[idx]
        # every inducing point's variance (L, M) first: gathering rows of Lu would copy (L, B, M) and scatter it back
        var = self._whitened()[3].pow(2).sum(-1)
        return self._q()[0][:, rows].T, var[:, rows].clamp(1e-10, 100.0).T

    def kl(self, idx: torch.Tensor, n_total: int, kl_scaling: str) -> torch.Tensor:
        chol_k, b, c, lu = self._whitened()
        self._memo = None  # a step's KL is its last use; the next step has new parameters
        m = self.inducing.shape[0]
        logdet_k = 2.0 * torch.log(torch.diagonal(chol_k, dim1=-2, dim2=-1)).sum()
        logdet_s = 2.0 * torch.log(torch.diagonal(lu, dim1=-2, dim2=-1).abs()).sum()
        kl = 0.5 * (c.pow(2).sum() + b.pow(2).sum() - m * b.shape[0] + logdet_k - logdet_s)
        return kl * (n_total / m) if kl_scaling == "reference" else kl

    @torch.no_grad()
    def predict(self, x: torch.Tensor, g, train_pos, chunk_size: int):
        """Predictive marginals at any points, chunked: memory (L, M, chunk), never N × M at once."""
        mus, vs = [], []
        for start in range(0, x.shape[0], chunk_size):
            mu, var = self._marginals_at(x[start : start + chunk_size])
            mus.append(mu)
            vs.append(var)
        self._memo = None  # do not hold C (L, M, M) past the call
        return torch.cat(mus), torch.cat(vs)


def solve_lower_by_lower(chol: torch.Tensor, lu: torch.Tensor) -> torch.Tensor:
    """L⁻¹U for lower-triangular L and U (..., M, M). The result is lower-triangular too, so solving by
    halves (recursively) skips its zero upper-right blocks: about a third of one full triangular solve."""
    h = chol.shape[-1] // 2
    if h < 128:
        return torch.linalg.solve_triangular(chol, lu, upper=False)
    l11, l21, l22 = chol[..., :h, :h], chol[..., h:, :h], chol[..., h:, h:]
    c11 = solve_lower_by_lower(l11, lu[..., :h, :h])
    c21 = torch.linalg.solve_triangular(l22, lu[..., h:, :h] - l21 @ c11, upper=False)
    c22 = solve_lower_by_lower(l22, lu[..., h:, h:])
    top = torch.cat([c11, c11.new_zeros(c11.shape[:-1] + (lu.shape[-1] - h,))], -1)
    return torch.cat([top, torch.cat([c21, c22], -1)], -2)


def inducing_rows(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
    """For each row of x, the index of the identical row of z; None unless every row of x has one."""
    index = {tuple(row): i for i, row in enumerate(z.tolist())}
    rows = [index.get(tuple(row)) for row in x.tolist()]
    return None if any(r is None for r in rows) else torch.tensor(rows, dtype=torch.long)
