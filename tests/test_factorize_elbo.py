"""KL terms against closed forms, and the expected log-likelihood estimator's expectation."""

import gpytorch
import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from tissuelens.factorize.elbo import expected_loglik, loadings_fixed_point, multiplicative_update
from tissuelens.factorize.kernels import FactorKernel, inverse_softplus
from tissuelens.factorize.lcgp import LCGPPrior, conditional_kl, knn_excluding_self, prior_conditional
from tissuelens.factorize.pnmf import kl_normal
from tissuelens.factorize.svgp import SVGPPrior, solve_lower_by_lower


def make_kernel(lengthscale, n_factors=1):
    return FactorKernel(n_factors, lengthscale).double()


def dense(kernel, x1, x2):
    return kernel.matrix(x1, x2).detach()


@pytest.fixture(autouse=True)
def _double_precision():
    # closed-form comparisons need float64; restore the default for other test modules
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def test_pnmf_kl_is_the_normal_closed_form():
    mu, sd = torch.tensor([0.0, 1.5, -2.0]), torch.tensor([1.0, 0.3, 2.0])
    expected = kl_divergence(Normal(mu, sd), Normal(0.0, 1.0))
    torch.testing.assert_close(kl_normal(mu, sd**2), expected)
    assert kl_normal(torch.tensor(0.0), torch.tensor(1.0)).item() == 0.0
    # against a learned prior N(m, s²) per factor
    loc, scale = torch.tensor([0.5, -1.0, 0.0]), torch.tensor([2.0, 0.7, 1.3])
    torch.testing.assert_close(kl_normal(mu, sd**2, loc, scale), kl_divergence(Normal(mu, sd), Normal(loc, scale)))


def _factor_kernel(lengthscales, amplitudes=None):
    amplitudes = amplitudes or (1.0,) * len(lengthscales)
    kernel = make_kernel(8.0, n_factors=len(lengthscales))
    with torch.no_grad():
        kernel.raw_lengthscales.copy_(torch.tensor([inverse_softplus(v) for v in lengthscales]))
        kernel.raw_amplitudes.copy_(torch.tensor([inverse_softplus(v) for v in amplitudes]))
    return kernel


def _svgp(z, kernel, beta, mean, lu, jitter):
    prior = SVGPPrior(z, len(beta), kernel, jitter=jitter, learn_mean=True).double()
    with torch.no_grad():
        prior.mean_module.raw_constant.copy_(beta)
    prior.init_variational(mean, lu)
    return prior


def test_svgp_kl_equals_kl_of_u_against_the_gp_prior():
    gen = torch.Generator().manual_seed(0)
    z = torch.rand(7, 2, generator=gen) * 20
    kernel = _factor_kernel((3.0, 8.0, 20.0), (0.5, 1.0, 2.0))
    beta = torch.tensor([0.5, -1.0, 0.0])
    mean = torch.randn(3, 7, generator=gen)
    lu = torch.randn(3, 7, 7, generator=gen).tril(-1) * 0.1 + torch.diag_embed(torch.rand(3, 7, generator=gen) + 0.2)
    prior = _svgp(z, kernel, beta, mean, lu, 1e-6)
    kzz = dense(kernel, z, z) + 1e-6 * torch.eye(7)  # (3, 7, 7): one kernel per factor
    expected = sum(
        kl_divergence(MultivariateNormal(mean[l], scale_tril=lu[l]), MultivariateNormal(beta[l].expand(7), kzz[l]))
        for l in range(3))
    got = prior.kl(torch.arange(4), n_total=100, kl_scaling="elbo")
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    # the reference's weighting multiplies by N/M
    assert prior.kl(torch.arange(4), 100, "reference").item() == pytest.approx(expected.item() * 100 / 7, rel=1e-6)


def _svgp_posterior_marginals(kernel, z, x, beta, mean, lu, jitter):
    """q(f(x)) of the SVGP, densely: μ = β + k_xZ K⁻¹(m − β), σ² = k_xx − k_xZ K⁻¹ k_Zx + k_xZ K⁻¹ S K⁻¹ k_Zx."""
    kzz = dense(kernel, z, z) + jitter * torch.eye(len(z))
    kzx = dense(kernel, z, x)
    w = torch.linalg.solve(kzz, kzx)  # K⁻¹ K_Zx (L, M, B)
    s = lu @ lu.transpose(-1, -2)
    mu = beta[:, None] + (w * (mean - beta[:, None]).unsqueeze(-1)).sum(-2)
    kxx = torch.stack([dense(kernel, x, x)[l].diagonal() for l in range(len(beta))])
    var = kxx - (kzx * w).sum(-2) + (w * (s @ w)).sum(-2)
    return mu.T, var.T


def test_svgp_marginals_are_the_posterior_at_inducing_points_and_between_them():
    """Cells sitting on inducing points read q(u) directly; other points take the general formula. Both
    must equal the dense SVGP posterior and gpytorch's own call, and kernel gradients must reach the
    general path."""
    gen = torch.Generator().manual_seed(1)
    z = torch.rand(9, 2, generator=gen) * 20
    kernel = _factor_kernel((4.0, 11.0))
    beta = torch.tensor([0.4, -1.2])
    mean = torch.randn(2, 9, generator=gen)
    lu = torch.randn(2, 9, 9, generator=gen).tril(-1) * 0.2 + torch.diag_embed(torch.rand(2, 9, generator=gen) + 0.3)
    cells = torch.tensor([4, 0, 4, 8, 2])  # shuffled, one location twice
    for x, shortcut in ((z[cells], True), (z[cells] + 0.5, False)):
        prior = _svgp(z, kernel, beta, mean, lu, 1e-9)
        prior.set_inputs(x)
        assert (prior.cell_rows is not None) == shortcut
        if shortcut:
            assert prior.cell_rows.tolist() == cells.tolist()
        mu, var = prior.marginals(torch.arange(len(x)))
        want_mu, want_var = _svgp_posterior_marginals(kernel, z, x, beta, mean, lu, 1e-9)
        torch.testing.assert_close(mu, want_mu, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(var, want_var, atol=1e-6, rtol=1e-6)
        pred_mu, pred_var = prior.predict(x, None, None, chunk_size=2)  # chunked general formula
        torch.testing.assert_close(pred_mu, want_mu, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(pred_var, want_var, atol=1e-6, rtol=1e-6)
        if not shortcut:
            (mu.sum() + var.sum()).backward()
            assert prior.kernel.raw_lengthscales.grad.abs().min() > 0
        prior.eval()  # gpytorch's own call of its unwhitened strategy gives the same posterior
        with torch.no_grad(), gpytorch.settings.max_cholesky_size(10**6):
            out = prior(x)
        torch.testing.assert_close(out.mean.T, want_mu, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(out.variance.T, want_var, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("m", [7, 301, 600])
def test_solving_by_halves_equals_one_triangular_solve_with_its_gradients(m):
    gen = torch.Generator().manual_seed(m)
    a = torch.randn(2, m, m, generator=gen)
    k = (a @ a.transpose(-1, -2) + m * torch.eye(m)).requires_grad_(True)
    raw = torch.randn(2, m, m, generator=gen, requires_grad=True)
    results = []
    for solve in (solve_lower_by_lower, lambda l, u: torch.linalg.solve_triangular(l, u, upper=False)):
        c = solve(torch.linalg.cholesky(k), raw.tril())
        results.append((c, *torch.autograd.grad(c.pow(2).sum() + c.sum(), (k, raw))))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_lcgp_conditional_kl_is_the_chain_rule_difference():
    """E_{q(u_n)} KL(q(u_j|u_n) || p(u_j|u_n)) = KL(q(u_n,u_j) || p(u_n,u_j)) − KL(q(u_n) || p(u_n))."""
    gen = torch.Generator().manual_seed(3)
    K, R, L, jitter = 4, 6, 2, 1e-6
    x = torch.rand(K + 1, 2, generator=gen) * 10
    kernel = make_kernel(5.0, n_factors=L)
    with torch.no_grad():
        kernel.raw_lengthscales.copy_(torch.tensor([inverse_softplus(v) for v in (2.0, 7.0)]))
    kfull = dense(kernel, x, x)  # (L, K+1, K+1)
    beta = torch.tensor([0.3, -0.8])  # prior mean per factor
    m = torch.randn(L, K + 1, generator=gen)
    lu = torch.randn(L, K + 1, R, generator=gen) * 0.5
    prior = prior_conditional(kfull[:, :1, 0], kfull[:, None, 1:, 0], kfull[:, None, 1:, 1:], jitter)
    got = conditional_kl(m[:, :1], m[:, None, 1:], lu[:, :1], lu[:, None, 1:], *prior, jitter, beta)
    for l in range(L):
        s = lu[l] @ lu[l].T
        s[1:, 1:] += jitter * torch.eye(K)
        p = kfull[l].clone()
        p[1:, 1:] += jitter * torch.eye(K)
        prior_mean = torch.full((K + 1,), beta[l].item())
        joint = kl_divergence(MultivariateNormal(m[l], s), MultivariateNormal(prior_mean, p))
        marg = kl_divergence(MultivariateNormal(m[l, 1:], s[1:, 1:]), MultivariateNormal(prior_mean[1:], p[1:, 1:]))
        assert got[l, 0].item() == pytest.approx((joint - marg).item(), rel=1e-6, abs=1e-8)


def _conditional_kl_through_cholesky(m_j, m_n, lu_j, lu_n, k_jj, k_nj, k_nn, jitter, prior_mean):
    """The spec's §4.4 arithmetic as first written, with autograd through cholesky and cholesky_solve."""
    eye = torch.eye(k_nn.shape[-1])
    beta = torch.cholesky_solve(k_nj.unsqueeze(-1), torch.linalg.cholesky(k_nn + jitter * eye)).squeeze(-1)
    tau2 = (k_jj - (k_nj * beta).sum(-1)).clamp_min(1e-6)
    s_nn = lu_n @ lu_n.transpose(-1, -2) + jitter * eye
    s_nj = (lu_n @ lu_j.unsqueeze(-1)).squeeze(-1)
    s_jj = lu_j.pow(2).sum(-1)
    alpha = torch.cholesky_solve(s_nj.unsqueeze(-1), torch.linalg.cholesky(s_nn)).squeeze(-1)
    tau2_q = (s_jj - (s_nj * alpha).sum(-1)).clamp_min(1e-6)
    m_j, m_n = m_j - prior_mean[:, None], m_n - prior_mean[:, None, None]
    delta = m_j - (beta * m_n).sum(-1)
    b_s_b = (beta.unsqueeze(-2) @ s_nn @ beta.unsqueeze(-1)).squeeze(-1).squeeze(-1)
    s_b = (s_nj * beta).sum(-1)
    return 0.5 * (torch.log(tau2) - torch.log(tau2_q) - 1.0 + (delta**2 + s_jj + b_s_b - 2.0 * s_b) / tau2)


def test_lcgp_kl_closed_form_backward_matches_autograd_through_cholesky():
    """conditional_kl's solves have a hand-written backward (lcgp._SPDSolve); values and gradients for the
    means, Lu, β and the kernel hyperparameters equal those of autograd through the Cholesky factors."""
    gen = torch.Generator().manual_seed(5)
    n, K, R, L, B, jitter = 40, 5, 8, 3, 12, 1e-5
    x = torch.rand(n, 2, generator=gen) * 10
    nbr = torch.as_tensor(knn_excluding_self(x.numpy(), K))
    idx = torch.arange(0, n, 3)[:B]
    kernel = make_kernel(3.0, n_factors=L)
    m = torch.randn(L, n, generator=gen).requires_grad_()
    lu = (torch.randn(L, n, R, generator=gen) * 0.4).requires_grad_()
    prior_mean = torch.tensor([0.2, -0.5, 1.0], requires_grad=True)
    params = [m, lu, prior_mean, *kernel.parameters()]
    results = []
    closed_form = lambda m_j, m_n, lu_j, lu_n, k_jj, k_nj, k_nn, jitter, prior_mean: conditional_kl(  # noqa: E731
        m_j, m_n, lu_j, lu_n, *prior_conditional(k_jj, k_nj, k_nn, jitter), jitter, prior_mean)
    for fn in (closed_form, _conditional_kl_through_cholesky):
        x_j, x_n = x[idx], x[nbr[idx]]
        kl = fn(m[:, idx], m[:, nbr[idx]], lu[:, idx], lu[:, nbr[idx]], kernel.matrix(x_j, x_j, diag=True),
                kernel.matrix(x_n, x_j.unsqueeze(-2)).squeeze(-1), kernel.matrix(x_n, x_n), jitter, prior_mean)
        results.append((kl, *torch.autograd.grad((kl * torch.linspace(0.5, 2, B)).sum(), params)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)


def test_lcgp_prior_conditional_cache_gives_the_uncached_kl_and_follows_the_kernel():
    """Steps without kernel gradient reuse each cell's β, τ²; the KL and its gradients equal a fresh
    computation's, and a kernel update (as the kernel's optimiser makes it, in place) invalidates them."""
    gen = torch.Generator().manual_seed(7)
    n, K, R, L = 30, 4, 6, 2
    x = torch.rand(n, 2, generator=gen) * 10
    prior = LCGPPrior(x, L, K, R, make_kernel(3.0, n_factors=L), 1e-5, torch.randn(L, n, generator=gen),
                      torch.randn(L, n, R, generator=gen) * 0.4)

    def kl_and_grads(idx, cached):
        kept = prior._cache
        prior._cache = kept if cached else None
        kl = prior.kl(idx, n, "n_over_batch")
        prior._cache = prior._cache if cached else kept
        return (kl, *torch.autograd.grad(kl, (prior.mean, prior.lu)))

    prior.kernel.requires_grad_(False)  # a step between kernel steps
    for idx in (torch.arange(0, 20), torch.arange(10, 30), torch.arange(5, 25)):  # overlapping batches
        for got, want in zip(kl_and_grads(idx, True), kl_and_grads(idx, False)):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert prior._cache is not None and bool(prior._cache[3].all())
    with torch.no_grad():
        prior.kernel.raw_lengthscales.add_(0.5)
    idx = torch.arange(0, 20)
    after = kl_and_grads(idx, True)
    for got, want in zip(after, kl_and_grads(idx, False)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    prior.kernel.requires_grad_(True)  # a kernel step: no cache, the kernel's gradient flows
    kl = prior.kl(idx, n, "n_over_batch")
    assert prior._cache is None
    torch.testing.assert_close(kl, after[0], rtol=1e-12, atol=1e-12)
    assert torch.autograd.grad(kl, prior.kernel.raw_lengthscales)[0].abs().sum() > 0


def test_knn_excludes_self_even_with_duplicate_points():
    xy = np.array([[0, 0], [0, 0], [1, 0], [5, 5], [6, 5]], dtype=float)
    nbr = knn_excluding_self(xy, 2)
    assert nbr.shape == (5, 2)
    assert not (nbr == np.arange(5)[:, None]).any()
    assert set(nbr[0]) == {1, 2}


def _exact_single_factor(y, w, mu, var, nu):
    # L = 1: log(W e^F) = log W + F, so E[log] = log W + μ exactly
    rate_mean = nu[:, None] * torch.exp(mu + var / 2) @ w.T
    return (y * (torch.log(w.T) + mu + torch.log(nu[:, None])) - rate_mean - torch.lgamma(y + 1)).sum()


def test_expected_loglik_is_exact_in_expectation_for_one_factor():
    gen = torch.Generator().manual_seed(0)
    y = torch.poisson(torch.full((6, 5), 3.0), generator=gen)
    w = torch.rand(5, 1, generator=gen) + 0.5
    mu, var = torch.randn(6, 1, generator=gen) * 0.3, torch.rand(6, 1, generator=gen) * 0.5
    nu = torch.rand(6, generator=gen) + 0.5
    eps = torch.randn(20000, 6, 1, generator=gen)
    exact = _exact_single_factor(y, w, mu, var, nu)
    assert expected_loglik(y, w, mu, var, nu, eps).item() == pytest.approx(exact.item(), rel=2e-3)
    # Jensen's bound is exact here too (log-sum of one term is linear in F)
    assert expected_loglik(y, w, mu, var, nu, None).item() == pytest.approx(exact.item(), rel=1e-9)


def test_expected_loglik_matches_quadrature_for_two_factors():
    gen = torch.Generator().manual_seed(1)
    y = torch.tensor([[4.0, 0.0, 7.0]])
    w = torch.tensor([[1.0, 0.2], [0.3, 0.9], [0.5, 0.5]])
    mu, var = torch.tensor([[0.2, -0.4]]), torch.tensor([[0.5, 0.8]])
    nu = torch.ones(1)
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)
    f1 = mu[0, 0].item() + np.sqrt(var[0, 0].item()) * nodes
    f2 = mu[0, 1].item() + np.sqrt(var[0, 1].item()) * nodes
    ww = np.outer(weights, weights) / (2 * np.pi)
    rate = np.exp(f1)[:, None, None] * w[:, 0].numpy() + np.exp(f2)[None, :, None] * w[:, 1].numpy()
    term1 = (ww[..., None] * np.log(rate)).sum((0, 1)) @ y[0].numpy()
    term2 = (torch.exp(mu + var / 2) @ w.T).sum().item()
    exact = term1 - term2 - torch.lgamma(y + 1).sum().item()
    eps = torch.randn(40000, 1, 2, generator=gen)
    assert expected_loglik(y, w, mu, var, nu, eps).item() == pytest.approx(exact, rel=2e-3)
    assert expected_loglik(y, w, mu, var, nu, None).item() < exact  # Jensen: a lower bound


def test_minibatch_scaling_is_unbiased():
    """(N/|B|)(D/|G|) × block sums average to the full sum over random cell and gene batches."""
    gen = torch.Generator().manual_seed(2)
    y = torch.poisson(torch.full((12, 8), 2.0), generator=gen)
    w = torch.rand(8, 3, generator=gen)
    mu, var, nu = torch.randn(12, 3, generator=gen) * 0.2, torch.full((12, 3), 0.1), torch.ones(12)
    full = expected_loglik(y, w, mu, var, nu, None).item()
    draws = []
    for _ in range(4000):
        b, g = torch.randperm(12, generator=gen)[:4], torch.randperm(8, generator=gen)[:3]
        part = expected_loglik(y[b][:, g], w[g], mu[b], var[b], nu[b], None).item()
        draws.append(part * (12 / 4) * (8 / 3))
    assert np.mean(draws) == pytest.approx(full, rel=0.01)


def test_multiplicative_update_is_a_fixed_point_at_the_poisson_optimum():
    """With exact counts y = W F (σ = 0), the Lee–Seung update leaves W unchanged."""
    gen = torch.Generator().manual_seed(4)
    f = torch.rand(30, 2, generator=gen) + 0.1
    w = torch.rand(5, 2, generator=gen) + 0.1
    y = f @ w.T
    mu, var, nu = torch.log(f), torch.zeros(30, 2), torch.ones(30)
    _, num = expected_loglik(y, w, mu, var, nu, None, want_update=True)
    w2 = w.clone()
    multiplicative_update(w2, torch.arange(5), num, mu, var, nu)
    torch.testing.assert_close(w2, w, rtol=1e-6, atol=1e-7)
    # from a perturbed W it moves towards the truth
    w3 = w * 1.5
    _, num = expected_loglik(y, w3, mu, var, nu, None, want_update=True)
    before = (w3 - w).norm()
    multiplicative_update(w3, torch.arange(5), num, mu, var, nu)
    assert (w3 - w).norm() < before


def test_damped_update_moves_part_of_the_way_in_log_space():
    gen = torch.Generator().manual_seed(5)
    f = torch.rand(30, 2, generator=gen) + 0.1
    w = torch.rand(5, 2, generator=gen) + 0.1
    y = f @ w.T
    mu, var, nu = torch.log(f), torch.zeros(30, 2), torch.ones(30)
    start = w * 1.5
    _, num = expected_loglik(y, start, mu, var, nu, None, want_update=True)
    full, half = start.clone(), start.clone()
    multiplicative_update(full, torch.arange(5), num, mu, var, nu)
    multiplicative_update(half, torch.arange(5), num, mu, var, nu, step=0.5)
    torch.testing.assert_close(half, torch.sqrt(start * full))  # geometric midpoint


def test_full_pass_fixed_point_equals_the_minibatch_update_on_all_cells():
    gen = torch.Generator().manual_seed(6)
    y = torch.poisson(torch.full((20, 6), 2.0), generator=gen)
    w = torch.rand(6, 3, generator=gen) + 0.2
    mu, var, nu = torch.randn(20, 3, generator=gen) * 0.3, torch.rand(20, 3, generator=gen) * 0.2, torch.rand(20, generator=gen) + 0.5
    eps = torch.randn(2, 20, 3, generator=gen)
    # chunks of cells sum to the single block; draws reuse the same ε
    blocks = [(torch.arange(0, 7), y[:7]), (torch.arange(7, 20), y[7:])]
    chunked = loadings_fixed_point(w, blocks, mu, var, nu, eps, expanded=True)
    _, num = expected_loglik(y, w, mu, var, nu, [e for e in eps], want_update=True)
    whole = w.clone()
    multiplicative_update(whole, torch.arange(6), num, mu, var, nu)
    torch.testing.assert_close(chunked, whole, rtol=1e-10, atol=1e-12)
