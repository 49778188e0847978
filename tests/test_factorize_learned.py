"""Issue-14 parts of the model: learned pnmf prior, LCGP rank guard, NSF's deviance, the stop rule,
and the final loadings refit (W independent of the minibatch path)."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from conftest import torch_threads
from helpers.factorize_fixtures import demo_adata, settings

from tissuelens.errors import InputError
from tissuelens.factorize.data import load_factor_data
from tissuelens.factorize.lcgp import knn_excluding_self
from tissuelens.factorize.metrics import deviance
from tissuelens.factorize.model import build_model
from tissuelens.factorize.train import Trainer, plateau


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def small():
    return demo_adata(n_spots=150, n_genes=40, seed=3)


def _trainer(adata, variant, **kw):
    s = settings(**{"n_factors": 3, "n_inducing": 30, "n_neighbors": 5, **kw})
    data = load_factor_data(adata, s, variant, s["seed"], "small")
    return Trainer(build_model(variant, data, s), data, s, variant, torch.device("cpu"))


def test_nsf_deviance_by_hand():
    """NSF's dev_mean on a 3 x 2 matrix: term1 = the mean of y log(y/μ) over the y > 0 entries of the whole
    matrix (shared by both genes); each gene adds its mean over cells of μ − y; then the mean over genes."""
    y = np.array([[2.0, 0.0], [1.0, 3.0], [0.0, 4.0]])
    mu = np.array([[1.0, 0.5], [2.0, 2.0], [0.5, 4.0]])
    ylog = [2 * np.log(2 / 1), 1 * np.log(1 / 2), 3 * np.log(3 / 2), 4 * np.log(4 / 4)]
    term1 = np.mean(ylog)
    gene1 = term1 + np.mean([1 - 2, 2 - 1, 0.5 - 0])
    gene2 = term1 + np.mean([0.5 - 0, 2 - 3, 4 - 4])
    # rate = factors @ loadingsᵀ with factors = μ and identity loadings
    got = deviance(sp.csr_matrix(y), mu, np.eye(2))
    assert got["nsf"] == pytest.approx((gene1 + gene2) / 2, rel=1e-12)
    # the proper deviance differs: 2 Σ [y log(y/μ) − y + μ] / (N·D)
    proper = 2 * (sum(ylog) + (mu - y).sum()) / 6
    assert got["mean"] == pytest.approx(proper, rel=1e-12)
    assert got["nsf"] != pytest.approx(got["mean"], rel=1e-3)


def test_pnmf_prior_is_learned_and_given_to_held_out_cells(small):
    t = _trainer(small, "pnmf", max_iter=40, learning_rate=0.05, tol=0.0)
    prior = t.model.prior
    loc0, scale0 = prior.prior_loc.detach().clone(), prior.prior_scale.detach().clone()
    t.fit()
    assert not torch.allclose(prior.prior_loc.detach(), loc0)
    assert not torch.allclose(prior.prior_scale.detach(), scale0)
    n = t.data.n_cells
    pos = torch.full((n,), -1)
    pos[torch.as_tensor(t.data.train_idx)] = torch.arange(len(t.data.train_idx))
    mu, var = prior.predict(None, None, pos, 64)
    held = torch.as_tensor(t.data.val_idx)
    assert len(held) > 0
    torch.testing.assert_close(mu[held], prior.prior_loc.detach().expand(len(held), -1))
    torch.testing.assert_close(var[held], prior.prior_scale.detach().pow(2).expand(len(held), -1))
    # the reference's fixed N(0, 1) when hyperparameters are not trained
    fixed = _trainer(small, "pnmf", train_kernel=False).model.prior
    assert not fixed.prior_loc.requires_grad and fixed.prior_scale.detach().tolist() == pytest.approx([1.0] * 3)


def _conditional_variance(lu, nbr):
    """Variational variance of u_j given its neighbours u_n under S = Lu Luᵀ (+ the model's jitter)."""
    s = lu @ lu.T + 1e-5 * torch.eye(len(lu))
    out = []
    for j in range(len(lu)):
        n = nbr[j]
        s_nn, s_nj = s[np.ix_(n, n)], s[n, j]
        out.append((s[j, j] - s_nj @ torch.linalg.solve(s_nn, s_nj)).item())
    return np.array(out)


def test_lcgp_rank_at_or_below_k_degenerates_and_the_default_does_not(small):
    """With R ≤ K the neighbours' rows of Lu span its columns: the conditional variance falls to the jitter.
    The default rank (2K) keeps it at the scale of the marginal variance."""
    k = 5
    nbr = knn_excluding_self(np.random.default_rng(0).uniform(size=(80, 2)), k)
    gen = torch.Generator().manual_seed(0)
    degenerate = _conditional_variance(torch.randn(80, k, generator=gen, dtype=torch.float64), nbr)
    assert np.median(degenerate) < 1e-3
    t = _trainer(small, "lcgp", n_neighbors=k, init="random")
    lu = t.model.prior.lu.detach()[0].double()
    assert lu.shape[1] == 2 * k
    healthy = _conditional_variance(lu, t.model.prior.neighbors.numpy())
    marginal = lu.pow(2).sum(-1).numpy()
    assert np.median(healthy) > 0.05 * np.median(marginal)


@pytest.mark.parametrize("rank", [3, 5])
def test_lcgp_rank_not_above_k_is_refused(small, rank):
    with pytest.raises(InputError, match=r"factorize.lcgp_rank: .* must exceed n_neighbors \(5\)"):
        _trainer(small, "lcgp", n_neighbors=5, lcgp_rank=rank)


def test_learned_group_diff_needs_a_positive_start(small):
    with pytest.raises(InputError, match="factorize.group_diff"):
        _trainer(small, "mggp_svgp", group_diff=0.0, train_group_diff=True)


def test_plateau_rule_fires_on_a_noisy_plateau_and_not_on_a_noisy_climb():
    rng = np.random.default_rng(0)
    flat = list(-1e5 + rng.normal(scale=50.0, size=400))  # noise 5e-4 relative: |Δmean| ≤ 1e-4 rarely holds
    climb = list(-1e5 + 30.0 * np.arange(400) + rng.normal(scale=50.0, size=400))
    fired = sum(plateau(flat[: i + 1], 100, 1e-4) for i in range(199, 400))
    assert fired > 50  # about half the checks at a true plateau
    assert not any(plateau(climb[: i + 1], 100, 1e-4) for i in range(199, 400))
    assert not plateau(flat[:150], 100, 1e-4)  # needs two windows
    assert not plateau(flat, 100, 0.0)  # tol 0: off


def test_one_cycle_stops_only_after_annealing(small):
    t = _trainer(small, "pnmf", max_iter=300, learning_rate=0.05, lr_schedule="one_cycle", tol=1.0, tol_window=5)
    result = t.fit()
    # tol = 1 accepts any plateau, so the stop waits for the schedule alone: rate ≤ 1 % of the peak
    assert result.converged == "plateau_after_annealing"
    assert t.opt.param_groups[0]["lr"] <= 0.01 * 0.05
    assert result.iterations > 0.3 * 300
    constant = _trainer(small, "pnmf", max_iter=300, learning_rate=0.05, lr_schedule="constant", tol=1.0, tol_window=5).fit()
    assert constant.converged == "plateau" and constant.iterations == 10


def test_final_loadings_do_not_depend_on_the_minibatch_path(small):
    """Refit with q fixed: two runs that reach the same q through different minibatch orders and different
    last-batch loadings end with the same W (the refit's fixed point), where the trained W differ."""
    a = _trainer(small, "svgp", batch_size=50, gene_batch_size=20, max_iter=30, final_loadings_iter=0)
    a.fit()
    w_trained = a.model.w.detach().clone()
    b_w = w_trained * torch.exp(0.3 * torch.randn(w_trained.shape, generator=torch.Generator().manual_seed(9)))
    s = dict(a.settings, final_loadings_iter=3000, final_loadings_tol=1e-9)
    a.settings = s
    a.refit_loadings()
    first = a.model.w.detach().clone()
    with torch.no_grad():
        a.model.w.copy_(b_w)  # another path's loadings, same q
    a.refit_loadings()
    second = a.model.w.detach().clone()
    assert torch.linalg.vector_norm(b_w - w_trained) / torch.linalg.vector_norm(w_trained) > 0.2
    torch.testing.assert_close(first, second, rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("variant", ["svgp", "lcgp"])
def test_kernel_moves_only_on_its_steps_and_other_steps_take_no_kernel_gradient(small, variant):
    t = _trainer(small, variant, kernel_every=3, learning_rate=0.05)
    kernel = t.model.prior.kernel
    before = kernel.raw_lengthscales.detach().clone()
    moved = []
    for _ in range(6):
        t.step()
        now = kernel.raw_lengthscales.detach().clone()
        moved.append(not torch.equal(now, before))
        before = now
        assert kernel.raw_lengthscales.requires_grad and kernel.raw_amplitudes.requires_grad  # restored
    assert moved == [True, False, False, True, False, False]  # iterations 0 and 3 step the kernel
    assert kernel.raw_lengthscales.grad is None  # the last step (iteration 5) computed no kernel gradient


def test_svgp_reuses_its_kernel_factor_only_while_the_kernel_is_unchanged(small):
    """Steps that do not step the kernel reuse chol(K) (as NSF caches Kuu_chol); the step after a kernel
    update must factorise the new kernel, and a reused factor gives the KL a fresh one gives."""
    t = _trainer(small, "svgp", kernel_every=3, learning_rate=0.05, n_inducing=1000)  # every cell on Z
    prior = t.model.prior
    assert prior.cell_rows is not None
    calls = []
    matrix = prior.kernel.matrix
    prior.kernel.matrix = lambda *a, **k: calls.append(t.iteration) or matrix(*a, **k)
    for _ in range(6):
        t.step()
    assert calls == [0, 1, 3, 4]  # kernel steps 0 and 3; steps 1 and 4 see a kernel those steps changed
    idx = torch.arange(4)
    with torch.no_grad():
        cached = prior.kl(idx, 10, "elbo")
        prior._kernel_cache = None
        fresh = prior.kl(idx, 10, "elbo")
    assert cached.item() == pytest.approx(fresh.item(), rel=1e-6)
    assert len(calls) == 5


@pytest.mark.parametrize("variant,advice", [("svgp", "n_inducing"), ("lcgp", "n_neighbors"), ("pnmf", "gene_batch_size")])
def test_a_run_over_its_time_budget_stops_after_one_kernel_cycle_naming_what_to_change(small, variant, advice):
    t = _trainer(small, variant, kernel_every=3, time_budget_minutes=1e-9, max_iter=50, tol=0.0)
    with pytest.raises(InputError, match=rf"factorize {variant}: .* s per iteration on cpu .* over "
                                         rf"time_budget_minutes=1e-09: set .*{advice}") as err:
        t.fit()
    assert t.iteration == 3 and "\n" not in str(err.value)
    within = _trainer(small, variant, kernel_every=3, max_iter=5, tol=0.0).fit()  # the default budget: 240 min
    assert within.iterations == 5
