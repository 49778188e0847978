"""Kernels: per-factor Matérn-3/2 and MGGP against their formulas, positive semi-definiteness, limits."""

import math

import numpy as np
import pytest
import torch

from tissuelens.factorize.kernels import FactorKernel, group_sqdist, inverse_softplus


def matern32(r, ls, amp=1.0):
    a = math.sqrt(3.0) * r / ls
    return amp * (1 + a) * math.exp(-a)


def kernel(lengthscale, n_groups=None, group_diff=1.0, n_factors=1, amplitude=1.0, train=True):
    return FactorKernel(n_factors, lengthscale, amplitude, train, n_groups, group_diff)


def test_group_embedding_is_equidistant():
    sq = group_sqdist(4).numpy()
    assert sq.shape == (4, 4)
    np.testing.assert_allclose(sq, 1 - np.eye(4), atol=1e-6)


def test_per_factor_matern_matches_the_formula_with_each_factors_parameters():
    k = kernel(1.0, n_factors=3)
    with torch.no_grad():  # three factors, three (lengthscale, amplitude) pairs
        k.raw_lengthscales.copy_(torch.tensor([inverse_softplus(v) for v in (2.0, 8.0, 30.0)]))
        k.raw_amplitudes.copy_(torch.tensor([inverse_softplus(v) for v in (0.5, 1.0, 2.5)]))
    x = torch.tensor([[0.0, 0.0], [6.0, 8.0], [1.0, 1.0]])
    K = k.matrix(x, x).detach()
    assert K.shape == (3, 3, 3)
    for f, (ls, amp) in enumerate([(2.0, 0.5), (8.0, 1.0), (30.0, 2.5)]):
        assert K[f, 0, 1].item() == pytest.approx(matern32(10.0, ls, amp), rel=1e-5)
        assert K[f, 0, 2].item() == pytest.approx(matern32(math.sqrt(2.0), ls, amp), rel=1e-5)
        np.testing.assert_allclose(torch.diagonal(K[f]).numpy(), amp, rtol=1e-5)
    np.testing.assert_allclose(k.matrix(x, x, diag=True).detach().numpy(), [[0.5] * 3, [1.0] * 3, [2.5] * 3], rtol=1e-5)
    # batched inputs (cells x neighbours, as LCGP passes them) put the factor first
    assert k.matrix(x.expand(5, 3, 2), x.expand(5, 3, 2)).shape == (3, 5, 3, 3)


def test_gpytorch_call_equals_the_matrix():
    k = kernel(5.0, n_factors=2)
    x = torch.rand(7, 2) * 10
    torch.testing.assert_close(k(x, x).to_dense(), k.matrix(x, x))


def test_kernel_parameters_learn_or_stay_fixed():
    assert kernel(8.0).raw_lengthscales.requires_grad and kernel(8.0).raw_amplitudes.requires_grad
    frozen = kernel(8.0, train=False)
    assert not frozen.raw_lengthscales.requires_grad and not frozen.raw_amplitudes.requires_grad
    assert frozen.lengthscales.item() == pytest.approx(8.0, rel=1e-6)
    learned_delta = FactorKernel(1, 8.0, 1.0, True, 3, 2.0, train_group_diff=True)
    assert learned_delta.raw_group_diff.requires_grad and learned_delta.group_diff.item() == pytest.approx(2.0, rel=1e-6)


def test_mggp_matches_the_formula_by_hand():
    k = kernel(2.0, n_groups=2, group_diff=3.0, amplitude=1.5)
    x = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [3.0, 4.0, 1.0]])
    K = k.matrix(x, x)[0].detach().double().numpy()
    # same group, r = 5: plain Matérn-3/2
    assert K[0, 1] == pytest.approx(matern32(5.0, 2.0, 1.5), rel=1e-5)
    # other group: ν = 1/(3·1 + 1) = 1/4, r̃ = √3·5/2·½, amplitude ν^{(3+2)/2} = 1/32
    rt = math.sqrt(3.0) * 5.0 / 2.0 * 0.5
    assert K[0, 2] == pytest.approx(1.5 * (1 + rt) * math.exp(-rt) / 32.0, rel=1e-5)
    # same location, other group: amplitude only
    assert K[1, 2] == pytest.approx(1.5 / 32.0, rel=1e-5)
    np.testing.assert_allclose(np.diag(K), 1.5, rtol=1e-6)
    np.testing.assert_allclose(k.matrix(x, x, diag=True).detach().numpy(), 1.5, rtol=1e-6)


@pytest.mark.parametrize("delta", [0.0, 1.0, 10.0])
def test_mggp_kernel_is_positive_semidefinite(delta):
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(120, 2, generator=gen) * 40
    g = torch.randint(0, 4, (120, 1), generator=gen).float()
    x = torch.cat([xy, g], 1)
    K = kernel(8.0, n_groups=4, group_diff=delta).matrix(x, x)[0].detach().double()
    assert torch.allclose(K, K.T)
    assert torch.linalg.eigvalsh(K).min().item() > -1e-5


def test_mggp_limits():
    xy = torch.rand(30, 2) * 20
    g = torch.randint(0, 3, (30, 1)).float()
    x = torch.cat([xy, g], 1)
    plain = kernel(5.0).matrix(xy, xy)[0].detach()
    shared = kernel(5.0, n_groups=3, group_diff=0.0).matrix(x, x)[0].detach()
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)  # δ = 0: one GP
    apart = kernel(5.0, n_groups=3, group_diff=1e6).matrix(x, x)[0].detach()
    other = g != g.T
    assert apart[other].abs().max() < 1e-6  # δ → ∞: independent groups
    torch.testing.assert_close(apart[~other], plain[~other], atol=1e-5, rtol=1e-5)


def test_lengthscale_lives_in_nsf_units_under_softplus():
    """ℓ = spatial_scale · softplus(raw): raw is in NSF's box units, so an Adam step moves ℓ by a share of
    the tissue, not by a fixed number of model units."""
    k = FactorKernel(2, 20.0, length_unit=50.0)
    assert k.lengthscales.detach().tolist() == pytest.approx([20.0, 20.0], rel=1e-5)
    assert k.raw_lengthscales[0].item() == pytest.approx(inverse_softplus(0.4), rel=1e-6)
    with torch.no_grad():
        k.raw_lengthscales += 0.01
    assert k.lengthscales[0].item() > 20.1  # 50 · sigmoid(raw) · 0.01 ≈ 0.17; in model units the step gives 20.003
