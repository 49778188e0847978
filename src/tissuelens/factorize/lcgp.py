"""`lcgp` / `mggp_lcgp`: locally conditioned GP, every training cell an inducing point (torch).

q(u_l) = N(m_l, Lu_l Lu_lᵀ) with a dense rank-R factor Lu_l (N, R). The prior (constant mean β_l, kernel
k_l per factor) enters through a sum of K-nearest-neighbour conditional KL terms; prediction conditions
each query on its K nearest cells. Neighbours are spatial only (within the cell's own section when the data
have sections); for MGGP the group column enters through the kernel.

The rank must exceed K: with R ≤ K the K neighbours' rows of Lu span its whole column space, so the
variational conditional variance of u_j given u_n collapses to the jitter and −½ log of it rewards an
ill-conditioned q (the KL is then not a divergence of two proper conditionals any more).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn



def knn_excluding_self(xy: np.ndarray, k: int) -> np.ndarray:
    """(N, K) indices of each point's K nearest other points (robust to duplicate coordinates)."""
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy, return_distance=False)
    own = idx == np.arange(len(xy))[:, None]
    own[~own.any(axis=1), -1] = True  # self not returned (duplicates): drop the farthest instead
    return idx[~own].reshape(len(xy), k)


class _SPDSolve(torch.autograd.Function):
    """x = A⁻¹b for batches of small SPD matrices A (…, K, K) and vectors b (…, K), by Cholesky.

    The backward is the closed form ḡ_b = A⁻¹ḡ, ḡ_A = −ḡ_b xᵀ: one more vector solve against the saved
    factor. Autograd through cholesky and cholesky_solve instead takes triangular solves with K×K
    right-hand sides, which MKL runs matrix by matrix with a thread team each: for an LCGP step's
    2 × 8,000 50×50 systems that was 6-14 s of a 7-15 s step on 2 cores, against 0.2 s for the forward.
    """

    @staticmethod
    def forward(ctx, a, b):
        chol = torch.linalg.cholesky(a)
        x = torch.cholesky_solve(b.unsqueeze(-1), chol).squeeze(-1)
        ctx.save_for_backward(chol, x)
        ctx.shapes = a.shape, b.shape
        return x

    @staticmethod
    def backward(ctx, g):
        chol, x = ctx.saved_tensors
        a_shape, b_shape = ctx.shapes
        gb = torch.cholesky_solve(g.unsqueeze(-1), chol).squeeze(-1)
        ga = (-gb.unsqueeze(-1) * x.unsqueeze(-2)).sum_to_size(a_shape) if ctx.needs_input_grad[0] else None
        return ga, gb.sum_to_size(b_shape)


def spd_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _SPDSolve.apply(a, b)


def prior_conditional(k_jj, k_nj, k_nn, jitter: float):
    """p(u_j | u_n) = N(βᵀu_n, τ²) for cells j with neighbours n: β = K_nn⁻¹k_nj (L,B,K), τ² (L,B).
    Kernel blocks per factor: k_jj (L,B), k_nj (L,B,K), k_nn (L,B,K,K)."""
    eye = torch.eye(k_nn.shape[-1], device=k_nn.device, dtype=k_nn.dtype)
    beta = spd_solve(k_nn + jitter * eye, k_nj)
    return beta, (k_jj - (k_nj * beta).sum(-1)).clamp_min(1e-6)


def conditional_kl(m_j, m_n, lu_j, lu_n, beta, tau2, jitter: float, prior_mean=None) -> torch.Tensor:
    """KL_j = E_{q(u_n)} KL(q(u_j | u_n) || p(u_j | u_n)) for a batch of cells j with neighbours n.

    Shapes: m_j (L,B), m_n (L,B,K), lu_j (L,B,R), lu_n (L,B,K,R); the prior conditional β (L,B,K), τ² (L,B)
    from `prior_conditional`; prior_mean (L,) or None (0). Returns (L, B).
    """
    eye = torch.eye(lu_n.shape[-2], device=lu_n.device, dtype=lu_n.dtype)
    s_nn = lu_n @ lu_n.transpose(-1, -2) + jitter * eye  # (L,B,K,K)
    s_nj = (lu_n @ lu_j.unsqueeze(-1)).squeeze(-1)  # (L,B,K)
    s_jj = lu_j.pow(2).sum(-1)  # (L,B)
    alpha = spd_solve(s_nn, s_nj)
    tau2_q = (s_jj - (s_nj * alpha).sum(-1)).clamp_min(1e-6)  # variational conditional variance
    if prior_mean is not None:  # p(u) has mean β_l: condition the centred values
        m_j, m_n = m_j - prior_mean[:, None], m_n - prior_mean[:, None, None]
    delta = m_j - (beta * m_n).sum(-1)
    b_s_b = (beta.unsqueeze(-2) @ s_nn @ beta.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    s_b = (s_nj * beta).sum(-1)
    return 0.5 * (torch.log(tau2) - torch.log(tau2_q) - 1.0 + (delta**2 + s_jj + b_s_b - 2.0 * s_b) / tau2)


class LCGPPrior(nn.Module):
    kind = "lcgp"

    def __init__(self, inputs: torch.Tensor, n_factors: int, n_neighbors: int, rank: int, kernel, jitter: float,
                 mean: torch.Tensor, lu: torch.Tensor, learn_mean: bool = False):
        super().__init__()
        if rank <= n_neighbors:
            raise ValueError(f"LCGP rank {rank} must exceed the {n_neighbors} neighbours")
        self.kernel = kernel
        self.jitter = jitter
        self.register_buffer("inputs", inputs)  # (N, 2) or (N, 3) with the group column
        self.register_buffer("neighbors", torch.as_tensor(knn_excluding_self(self.spatial.cpu().numpy(), n_neighbors)))
        self.mean = nn.Parameter(mean.clone())  # (L, N)
        self.lu = nn.Parameter(lu.clone())  # (L, N, R)
        self.prior_mean = nn.Parameter(torch.zeros(n_factors), requires_grad=learn_mean)  # β (L,)
        self._index = None
        self._cache = None  # (kernel parameter versions, β, τ², which cells are filled)

    @property
    def spatial(self) -> torch.Tensor:
        return torch.as_tensor(self._search(self.inputs))

    def _search(self, x: torch.Tensor) -> np.ndarray:
        """Points for the neighbour search: x, y (and the section, far apart: neighbours stay in their section)."""
        from tissuelens.factorize.kernels import search_space

        return search_space(x.detach().cpu().numpy(), getattr(self.kernel, "sectioned", False))

    @property
    def inducing(self) -> torch.Tensor:
        return self.inputs

    def marginals(self, idx: torch.Tensor):
        return self.mean[:, idx].T, self.lu[:, idx].pow(2).sum(-1).clamp(1e-3, 100.0).T

    def kl(self, idx: torch.Tensor, n_total: int, kl_scaling: str) -> torch.Tensor:
        nbr = self.neighbors[idx]  # (B,K)
        beta, tau2 = self._prior_conditional(idx)
        kl = conditional_kl(self.mean[:, idx], self.mean[:, nbr], self.lu[:, idx], self.lu[:, nbr], beta, tau2,
                            self.jitter, self.prior_mean)
        return kl.sum() * (n_total / len(idx))

    def _prior_conditional(self, idx: torch.Tensor):
        """β, τ² of the cells idx. Steps that leave the kernel alone (kernel_every > 1, or a frozen kernel) take
        no kernel gradient, so they reuse each cell's until the kernel changes, as svgp reuses chol(K) (at
        10,000 cells, batch 2,000, kernel_every 10: 8 % of the KL's CPU time; all of its prior side when the
        kernel is frozen)."""
        params = list(self.kernel.parameters())
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            self._cache = None
            return self._compute_prior_conditional(idx)
        key = tuple((p.data_ptr(), p._version) for p in params)
        if self._cache is None or self._cache[0] != key:
            (L, n), k = self.mean.shape, self.neighbors.shape[1]
            self._cache = (key, self.mean.new_zeros(L, n, k), self.mean.new_zeros(L, n),
                           torch.zeros(n, dtype=torch.bool, device=idx.device))
        _, beta, tau2, known = self._cache
        new = idx[~known[idx]]
        if len(new):
            with torch.no_grad():
                beta[:, new], tau2[:, new] = self._compute_prior_conditional(new)
            known[new] = True
        return beta[:, idx], tau2[:, idx]

    def _compute_prior_conditional(self, idx: torch.Tensor):
        x_j, x_n = self.inputs[idx], self.inputs[self.neighbors[idx]]
        return prior_conditional(self.kernel.matrix(x_j, x_j, diag=True),
                                 self.kernel.matrix(x_n, x_j.unsqueeze(-2)).squeeze(-1), self.kernel.matrix(x_n, x_n),
                                 self.jitter)

    def _knn(self, xy: np.ndarray, k: int) -> np.ndarray:
        if self._index is None:
            from sklearn.neighbors import NearestNeighbors

            self._index = NearestNeighbors().fit(self.spatial.cpu().numpy())
        return self._index.kneighbors(xy, n_neighbors=k, return_distance=False)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, g, train_pos, chunk_size: int):
        """Condition each query on its K nearest training cells (a training cell's nearest is itself).

        Memory per chunk (L, chunk, K, R); μ* = β + k_*nᵀK_nn⁻¹(m_n − β), σ*² = k_** − k_*nᵀK_nn⁻¹k_n* + αᵀS_nnα.
        """
        k = self.neighbors.shape[1]
        mus, vs = [], []
        eye = torch.eye(k, device=x.device)
        for start in range(0, x.shape[0], chunk_size):
            xq = x[start : start + chunk_size]
            nbr = torch.as_tensor(self._knn(self._search(xq), k), device=x.device)
            x_n = self.inputs[nbr]
            k_nn = self.kernel.matrix(x_n, x_n) + self.jitter * eye  # (L,C,K,K)
            k_nq = self.kernel.matrix(x_n, xq.unsqueeze(-2)).squeeze(-1)  # (L,C,K)
            chol = torch.linalg.cholesky(k_nn)
            alpha = torch.cholesky_solve(k_nq.unsqueeze(-1), chol).squeeze(-1)  # (L,C,K)
            beta = self.prior_mean[:, None]
            mu = beta + (alpha * (self.mean[:, nbr] - beta[..., None])).sum(-1)  # (L,C)
            reduced = self.kernel.matrix(xq, xq, diag=True) - (alpha * k_nq).sum(-1)
            spread = torch.einsum("lckr,lck->lcr", self.lu[:, nbr], alpha).pow(2).sum(-1)
            mus.append(mu.T)
            vs.append((reduced.clamp_min(0) + spread).clamp(1e-10, 100.0).T)
        return torch.cat(mus), torch.cat(vs)
