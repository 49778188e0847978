"""Training: exact resume, determinism, NaN stop, bad inputs and checkpoints, clamps."""

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import torch_threads
from helpers.factorize_fixtures import demo_adata, settings

from tissuelens.errors import InputError
from tissuelens.factorize import train as train_mod
from tissuelens.factorize.data import VARIANTS, load_factor_data
from tissuelens.factorize.model import build_model
from tissuelens.factorize.train import Trainer, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny problems: one torch thread is as fast and bit-for-bit comparisons stay simple; restored afterwards."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def small():
    return demo_adata(n_spots=150, n_genes=40, seed=3)


def _trainer(adata, variant, **kw):
    s = settings(n_factors=3, n_inducing=30, n_neighbors=5, batch_size=60, gene_batch_size=25, max_iter=8,
                 lr_schedule="one_cycle", **kw)
    data = load_factor_data(adata, s, variant, s["seed"], "small")
    return Trainer(build_model(variant, data, s), data, s, variant, torch.device("cpu"))


def _params(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_resume_continues_bit_for_bit(small, variant, tmp_path):
    straight = _trainer(small, variant)
    straight.fit()

    first = _trainer(small, variant)
    for _ in range(4):
        first.step()
    ckpt = tmp_path / "checkpoint.pt"
    save_checkpoint(ckpt, first.state())
    resumed = _trainer(small, variant)  # a fresh process would rebuild the model the same way
    result = resumed.fit(ckpt)

    assert result.iterations == 8
    assert resumed.history == straight.history
    a, b = _params(straight), _params(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_config_gives_identical_numbers(small):
    a, b = _trainer(small, "svgp"), _trainer(small, "svgp")
    a.fit(), b.fit()
    assert a.history == b.history
    assert torch.equal(a.model.w, b.model.w)
    c = _trainer(small, "svgp", seed=1)
    c.fit()
    assert c.history != a.history


def test_nan_stops_with_the_iteration(small, monkeypatch):
    trainer = _trainer(small, "pnmf")
    real, calls = train_mod.expected_loglik, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        if len(calls) == 3:
            return (out[0] * float("nan"), out[1]) if isinstance(out, tuple) else out * float("nan")
        return out

    monkeypatch.setattr(train_mod, "expected_loglik", poisoned)
    with pytest.raises(InputError, match=r"ELBO became nan at iteration 3"):
        trainer.fit()


def test_checkpoint_corrupt_or_mismatched(small, tmp_path):
    trainer = _trainer(small, "pnmf")
    trainer.step()
    ckpt = tmp_path / "checkpoint.pt"
    save_checkpoint(ckpt, trainer.state())
    other = _trainer(small, "pnmf", learning_rate=0.01)
    with pytest.raises(InputError, match=r"checkpoint.pt: checkpoint was written with other settings"):
        other.fit(ckpt)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=r"checkpoint.pt: corrupt checkpoint"):
        load_checkpoint(ckpt, trainer.fingerprint)
    # resume: false ignores the stale file
    fresh = _trainer(small, "pnmf", resume=False)
    assert fresh.fit(ckpt).iterations == 8


def _modified(adata, fn):
    ad = adata.copy()
    fn(ad)
    return ad


def _zero_gene(ad):
    c = ad.layers["counts"].tolil()
    c[:, 5] = 0
    ad.layers["counts"] = c.tocsr()


def _zero_cell(ad):
    c = ad.layers["counts"].tolil()
    c[7, :] = 0
    ad.layers["counts"] = c.tocsr()


def _nan_coord(ad):
    ad.obsm["spatial"] = ad.obsm["spatial"].copy()
    ad.obsm["spatial"][3, 0] = np.nan


def _lonely_group(ad):
    groups = ad.obs["group"].astype(str).to_numpy()
    groups[0] = "alone"
    ad.obs["group"] = groups


@pytest.mark.parametrize("variant,change,overrides,message", [
    ("pnmf", _zero_gene, {}, r"1 modelled genes have no counts \(e.g. 'SYN"),
    ("pnmf", _zero_cell, {"size_factors": True}, r"1 cells have no counts .*'spot_\d+'.*size factor is 0.*min_counts"),
    ("svgp", _nan_coord, {}, r"obsm\['spatial'\] has 1 cells with non-finite coordinates"),
    ("mggp_svgp", _lonely_group, {}, r"obs\['group'\] 'alone' has 1 cell; MGGP needs at least 2"),
    ("mggp_lcgp", lambda ad: ad.obs.drop(columns="group", inplace=True), {}, r"needs obs\['group'\]"),
    ("svgp", lambda ad: ad.obsm.pop("spatial"), {}, r"needs obsm\['spatial'\].*only pnmf"),
    ("pnmf", lambda ad: ad.layers.pop("counts"), {}, r"layers\['counts'\] is missing"),
    ("pnmf", lambda ad: None, {"n_factors": 41}, r"n_factors=41 is larger than the 40 modelled genes"),
])
def test_bad_input_is_one_clear_error(small, variant, change, overrides, message):
    ad = _modified(small, change)
    with pytest.raises(InputError, match=message) as err:
        load_factor_data(ad, settings(**overrides), variant, 0, "small.h5ad")
    assert str(err.value).startswith("small.h5ad: ")


def test_sizes_are_clamped_with_a_note(small, caplog):
    caplog.set_level(logging.INFO)
    s = settings(n_factors=3, n_inducing=10_000, n_neighbors=500, batch_size=10_000, gene_batch_size=999, max_iter=1)
    data = load_factor_data(small, s, "svgp", 0, "small")
    n = len(data.train_idx)
    trainer = Trainer(build_model("svgp", data, s), data, s, "svgp", torch.device("cpu"))
    assert trainer.model.prior.inducing.shape[0] <= n
    assert trainer.batch == n and trainer.gene_batch == 40
    assert trainer.clamps == {"batch_size": n, "gene_batch_size": 40}
    assert "n_inducing=10000 clamped" in caplog.text
    lc = build_model("lcgp", data, s)
    assert lc.prior.neighbors.shape == (n, n - 1)
    assert "n_neighbors=500 clamped" in caplog.text


def test_script_reports_bad_input_in_one_line(tmp_path, small):
    ad = small.copy()
    del ad.layers["counts"]
    path = tmp_path / "bad.h5ad"
    ad.write_h5ad(path)
    out = subprocess.run(
        [sys.executable, str(ROOT / "workflow" / "scripts" / "factorize.py"), "--h5ad", str(path), "--variant", "pnmf",
         "--settings", '{"n_factors": 2}', "--seed", "0", "--model", str(tmp_path / "m"), "--elbo", str(tmp_path / "e.csv")],
        capture_output=True, text=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {path}: layers['counts'] is missing (run preprocess first)"]
    assert not (tmp_path / "m").exists() and not (tmp_path / "e.csv").exists()


def test_auto_inducing_takes_every_location_while_cheap_then_kmeans_centres(small, caplog):
    from tissuelens.factorize.inducing import AUTO_INDUCING, inducing_count

    caplog.set_level(logging.INFO)
    every, centres = AUTO_INDUCING["cpu"]
    assert inducing_count("auto", every, "cpu") == every
    assert inducing_count("auto", every + 1, "cpu") == centres
    assert inducing_count("auto", every + 1, "cuda") == every + 1  # a GPU affords every location longer
    assert inducing_count(300, 10_000, "cpu") == 300
    assert "n_inducing auto on cpu: 1000 k-means centres (1501 distinct training locations)" in caplog.text
    s = settings(n_factors=3, n_inducing="auto", max_iter=1, device="cpu")
    data = load_factor_data(small, s, "svgp", 0, "small")
    prior = build_model("svgp", data, s).prior
    assert prior.inducing.shape[0] == len(data.train_idx)  # 150 spots: every one an inducing point
    assert prior.cell_rows is not None


def test_schema_defaults_train_at_a_constant_rate_to_a_plateau():
    from tissuelens.config import step_defaults

    d = step_defaults("factorize")
    assert (d["lr_schedule"], d["learning_rate"], d["tol_window"], d["n_inducing"]) == ("constant", 0.01, 50, "auto")


def test_a_cell_without_counts_in_the_modelled_genes_is_modelled(small):
    """Sparse platforms (Slide-seq) have such cells among the highly variable genes: y = 0 is a valid
    Poisson observation, so without size factors the cell trains and gets finite factors."""
    ad = _modified(small, _zero_cell)
    s = settings(n_factors=3, max_iter=5, tol=0.0)
    data = load_factor_data(ad, s, "pnmf", 0, "small")
    model = build_model("pnmf", data, s)
    Trainer(model, data, s, "pnmf", torch.device("cpu")).fit()
    mu, var = model.prior.marginals(torch.arange(len(data.train_idx)))
    assert torch.isfinite(mu).all() and torch.isfinite(var).all() and torch.isfinite(model.w).all()
