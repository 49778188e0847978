"""Kernels: the MGGP Matérn-3/2 formula, positive semi-definiteness, and its limits."""

import math

import numpy as np
import pytest
import torch

from tissuelens.factorize.kernels import dense, diagonal, group_sqdist, make_kernel


def matern32(r, ls):
    a = math.sqrt(3.0) * r / ls
    return (1 + a) * math.exp(-a)


def test_group_embedding_is_equidistant():
    sq = group_sqdist(4).numpy()
    assert sq.shape == (4, 4)
    np.testing.assert_allclose(sq, 1 - np.eye(4), atol=1e-6)


def test_mggp_matches_the_formula_by_hand():
    k = make_kernel(lengthscale=2.0, n_groups=2, group_diff=3.0)
    x = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [3.0, 4.0, 1.0]])
    K = dense(k, x, x).double().numpy()
    # same group, r = 5: plain Matérn-3/2
    assert K[0, 1] == pytest.approx(matern32(5.0, 2.0), rel=1e-5)
    # other group: ν = 1/(3·1 + 1) = 1/4, r̃ = √3·5/2·½, amplitude ν^{(3+2)/2} = 1/32
    rt = math.sqrt(3.0) * 5.0 / 2.0 * 0.5
    assert K[0, 2] == pytest.approx((1 + rt) * math.exp(-rt) / 32.0, rel=1e-5)
    # same location, other group: amplitude only
    assert K[1, 2] == pytest.approx(1 / 32.0, rel=1e-5)
    np.testing.assert_allclose(np.diag(K), 1.0, rtol=1e-6)
    np.testing.assert_allclose(diagonal(k, x).numpy(), 1.0, rtol=1e-6)


@pytest.mark.parametrize("delta", [0.0, 1.0, 10.0])
def test_mggp_kernel_is_positive_semidefinite(delta):
    gen = torch.Generator().manual_seed(1)
    xy = torch.rand(120, 2, generator=gen) * 40
    g = torch.randint(0, 4, (120, 1), generator=gen).float()
    K = dense(make_kernel(8.0, n_groups=4, group_diff=delta), torch.cat([xy, g], 1), torch.cat([xy, g], 1)).double()
    assert torch.allclose(K, K.T)
    assert torch.linalg.eigvalsh(K).min().item() > -1e-5


def test_mggp_limits():
    xy = torch.rand(30, 2) * 20
    g = torch.randint(0, 3, (30, 1)).float()
    x = torch.cat([xy, g], 1)
    plain = dense(make_kernel(5.0), xy, xy)
    shared = dense(make_kernel(5.0, n_groups=3, group_diff=0.0), x, x)
    torch.testing.assert_close(shared, plain, atol=1e-5, rtol=1e-5)  # δ = 0: one GP
    apart = dense(make_kernel(5.0, n_groups=3, group_diff=1e6), x, x)
    other = g != g.T
    assert apart[other].abs().max() < 1e-6  # δ → ∞: independent groups
    torch.testing.assert_close(apart[~other], plain[~other], atol=1e-5, rtol=1e-5)


def test_plain_matern_matches_formula():
    k = make_kernel(8.0)
    x = torch.tensor([[0.0, 0.0], [6.0, 8.0]])
    assert dense(k, x, x)[0, 1].item() == pytest.approx(matern32(10.0, 8.0), rel=1e-5)
    assert not k.raw_lengthscale.requires_grad
