"""`svgp` / `mggp_svgp`: a batch of L sparse variational GPs, one kernel and constant mean per factor (gpytorch).

Whitened Cholesky q(ũ) = N(m̃, S̃) with u = β + L_K ũ; fixed inducing points (k-means, plus their group
column for MGGP). The KL is global, so the minibatch ELBO needs it once (×N/M only in reference mode).
"""

from __future__ import annotations

import gpytorch
import torch
from gpytorch.variational import CholeskyVariationalDistribution, VariationalStrategy


class SVGPPrior(gpytorch.models.ApproximateGP):
    kind = "svgp"

    def __init__(self, inducing: torch.Tensor, n_factors: int, kernel, jitter: float, learn_mean: bool = False):
        m = inducing.shape[0]
        dist = CholeskyVariationalDistribution(m, batch_shape=torch.Size([n_factors]))
        strategy = VariationalStrategy(self, inducing, dist, learn_inducing_locations=False, jitter_val=jitter)
        super().__init__(strategy)
        self.mean_module = gpytorch.means.ConstantMean(batch_shape=torch.Size([n_factors]))
        self.mean_module.constant.requires_grad_(learn_mean)  # frozen at 0: the reference's zero mean
        self.covar_module = kernel
        self.register_buffer("train_inputs_", torch.empty(0))  # set by set_inputs

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    def set_inputs(self, x: torch.Tensor) -> None:
        """Kernel inputs of the training cells (coordinates, plus group column for MGGP)."""
        self.train_inputs_ = x

    def init_variational(self, mean: torch.Tensor, chol: torch.Tensor) -> None:
        """Set q(ũ) (mean (L, M), lower Cholesky (L, M, M)) and stop gpytorch re-initialising it."""
        dist = self.variational_strategy._variational_distribution
        with torch.no_grad():
            dist.variational_mean.copy_(mean)
            dist.chol_variational_covar.copy_(chol)
        self.variational_strategy.variational_params_initialized.fill_(1)

    @property
    def inducing(self) -> torch.Tensor:
        return self.variational_strategy.inducing_points

    def marginals(self, idx: torch.Tensor):
        out = self(self.train_inputs_[idx])
        return out.mean.T, out.variance.clamp(1e-10, 100.0).T

    def kl(self, idx: torch.Tensor, n_total: int, kl_scaling: str) -> torch.Tensor:
        kl = self.variational_strategy.kl_divergence().sum()
        return kl * (n_total / self.inducing.shape[0]) if kl_scaling == "reference" else kl

    @torch.no_grad()
    def predict(self, x: torch.Tensor, g, train_pos, chunk_size: int):
        """Predictive marginals at any points, chunked: memory (L, chunk, M), never N × M at once."""
        was_training = self.training
        self.eval()
        mus, vs = [], []
        for start in range(0, x.shape[0], chunk_size):
            out = self(x[start : start + chunk_size])
            mus.append(out.mean.T)
            vs.append(out.variance.clamp(1e-10, 100.0).T)
        self.train(was_training)
        return torch.cat(mus), torch.cat(vs)

    def u_space_cholesky(self) -> torch.Tensor:
        """Lu (L, M, M) with S = Lu Luᵀ the covariance of u (unwhitened), as the reference saves it."""
        with torch.no_grad():
            z = self.inducing
            kzz = self.covar_module.matrix(z, z) + self.variational_strategy.jitter_val * torch.eye(len(z), device=z.device)
            chol = torch.linalg.cholesky(kzz)
            s_tilde = self.variational_strategy._variational_distribution.chol_variational_covar.tril()
            return chol @ s_tilde
