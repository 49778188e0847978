"""SAE training through SAELens: planted-direction recovery, metrics, determinism, on-disk round trip."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sae_lens = pytest.importorskip("sae_lens")

from conftest import torch_threads

from tissuelens.errors import InputError  # noqa: E402
from tissuelens.sae.activations import ShuffledBatches  # noqa: E402
from tissuelens.sae.metrics import ReconstructionStats, evaluate  # noqa: E402
from tissuelens.sae.settings import check_sizes, resolve_settings  # noqa: E402
from tissuelens.sae.synthetic import sparse_codes, unit_directions  # noqa: E402
from tissuelens.sae.train import (  # noqa: E402
    build_training_sae,
    fit,
    load_sae,
    save_sae,
    seed_everything,
)


@pytest.fixture(autouse=True)
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """20,000 tokens in d=32, each a sum of 3 of 48 known unit directions (magnitudes 1-3) plus noise."""
    rng = np.random.default_rng(0)
    directions = unit_directions(48, 32, rng)
    x = sparse_codes(20000, 48, 3, rng) @ directions + 0.02 * rng.normal(size=(20000, 32))
    path = tmp_path_factory.mktemp("planted") / "layer_0.npy"
    np.save(path, x.astype(np.float16))
    return directions, np.load(path, mmap_mode="r")


def _settings(**kw):
    base = dict(expansion_factor=4, k=4, lr=0.003, training_tokens=100_000, batch_size=512)
    base.update(kw)
    return resolve_settings(base)


def _train(array, settings, seed=0, rows=None):
    seed_everything(seed)
    sae = build_training_sae(settings, array.shape[1], metadata={"model_name": "toy", "hook_name": "layer_0"})
    rows = np.arange(array.shape[0]) if rows is None else rows
    return fit(sae, ShuffledBatches(array, rows, settings["batch_size"], seed), settings, "cpu")


@pytest.fixture(scope="module")
def trained_topk(planted):
    directions, array = planted
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(array, _settings())
    finally:
        torch.set_num_threads(before)


def test_topk_sae_recovers_planted_directions(planted, trained_topk, tmp_path):
    directions, array = planted
    assert type(trained_topk.sae).__name__ == "TopKTrainingSAE"
    w = trained_topk.sae.W_dec.detach().numpy()
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    best = (directions @ w.T).max(axis=1)  # best-matching decoder row per planted direction
    assert (best >= 0.9).mean() >= 0.9, np.sort(best)[:10]
    # metrics of the saved-and-reloaded SAE on the data
    save_sae(trained_topk, tmp_path / "sae")
    metrics, freq = evaluate(load_sae(tmp_path / "sae"), array, np.arange(4000), batch_size=1000)
    assert metrics["l0"] == pytest.approx(4.0)
    assert metrics["fraction_variance_explained"] > 0.9
    assert metrics["n_eval_tokens"] == 4000 and freq.shape == (128,)
    assert metrics["dead_features"] == int((freq == 0).sum())


def test_history_records_every_step(trained_topk):
    h = trained_topk.history
    assert len(h) == 100_000 // 512 + 1  # SAELens steps until at least training_tokens samples
    assert np.all(np.diff(h["tokens"]) == 512)
    assert h["loss"].iloc[-1] < h["loss"].iloc[0] / 3
    assert (h["l0"] == 4).all()


def test_saelens_format_round_trip(trained_topk, planted, tmp_path):
    _, array = planted
    out = save_sae(trained_topk, tmp_path / "sae")
    assert {p.name for p in out.iterdir()} >= {"cfg.json", "sae_weights.safetensors", "sparsity.safetensors"}
    loaded = sae_lens.SAE.load_from_disk(str(out), device="cpu")  # SAELens' own loader, unchanged
    assert type(loaded).__name__ == "TopKSAE"
    assert loaded.cfg.d_in == 32 and loaded.cfg.d_sae == 128 and loaded.cfg.k == 4
    assert loaded.cfg.metadata.model_name == "toy" and loaded.cfg.metadata.hook_name == "layer_0"
    x = torch.from_numpy(np.asarray(array[:256], dtype=np.float32))
    trained_topk.sae.eval()
    with torch.no_grad():
        a_train = trained_topk.sae.encode(x)
        a_loaded = loaded.encode(x)
        # the inference copy folds the decoder norms into the encoder: same support, same reconstruction
        assert torch.equal(a_train != 0, a_loaded != 0)
        torch.testing.assert_close(loaded.decode(a_loaded), trained_topk.sae.decode(a_train), atol=1e-4, rtol=1e-4)


def test_standard_l1_sae_trains_and_round_trips(planted, tmp_path):
    _, array = planted
    settings = _settings(architecture="standard", l1_coefficient=0.5, training_tokens=8192)
    result = _train(array, settings)
    assert type(result.sae).__name__ == "StandardTrainingSAE"
    assert result.history["sparsity_loss"].gt(0).all()
    save_sae(result, tmp_path / "std")
    loaded = sae_lens.SAE.load_from_disk(str(tmp_path / "std"))
    assert type(loaded).__name__ == "StandardSAE"


def test_same_seed_same_weights(planted):
    _, array = planted
    settings = _settings(training_tokens=4096)
    a, b, c = (_train(array, settings, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.sae.W_dec, b.sae.W_dec) and torch.equal(a.sae.W_enc, b.sae.W_enc)
    assert not torch.equal(a.sae.W_dec, c.sae.W_dec)


class _Crash(ShuffledBatches):
    """Stream that dies after `limit` batches, like a job killed mid-training."""

    def __init__(self, *args, limit, **kwargs):
        super().__init__(*args, **kwargs)
        self.left = limit

    def __next__(self):
        if self.left == 0:
            raise KeyboardInterrupt("killed")
        self.left -= 1
        return super().__next__()


def test_interrupted_run_resumes_to_the_same_weights(planted, tmp_path):
    _, array = planted
    settings = _settings(training_tokens=512 * 40, n_checkpoints=1)  # one checkpoint, after step 21
    full = _train(array, settings)  # uninterrupted, no checkpoint directory
    rows = np.arange(array.shape[0])

    seed_everything(0)
    sae = build_training_sae(settings, 32)
    crash = _Crash(array, rows, 512, 0, limit=settings["n_batches_for_norm_estimate"] + 30)
    with pytest.raises(KeyboardInterrupt):
        fit(sae, crash, settings, "cpu", checkpoint_dir=tmp_path / "ck")
    saved = [p for p in (tmp_path / "ck").iterdir() if (p / "checkpoint_complete").is_file()]
    assert len(saved) == 1

    seed_everything(123)  # the resumed run takes everything from the checkpoint, not from the seed
    resumed = fit(build_training_sae(settings, 32), ShuffledBatches(array, rows, 512, 0), settings, "cpu",
                  checkpoint_dir=tmp_path / "ck")
    assert len(resumed.history) == len(full.history)
    np.testing.assert_allclose(resumed.history["loss"], full.history["loss"], rtol=1e-6)
    assert torch.equal(resumed.sae.W_dec, full.sae.W_dec) and torch.equal(resumed.sae.b_enc, full.sae.b_enc)

    # other settings: the checkpoint is not used
    other = _settings(training_tokens=512 * 40, n_checkpoints=1, lr=0.001)
    fresh = fit(build_training_sae(other, 32), ShuffledBatches(array, rows, 512, 0), other, "cpu",
                checkpoint_dir=tmp_path / "ck")
    assert fresh.history["step"].iloc[0] == 0


def test_nan_loss_stops_training_naming_the_iteration():
    settings = _settings(training_tokens=64 * 10, batch_size=64, normalize_activations="none")

    def batches():
        for i in range(100):
            x = torch.randn(64, 8)
            if i == 3:
                x[5, 2] = float("nan")
            yield x

    sae = build_training_sae(settings, 8)
    with pytest.raises(InputError, match="loss became nan at iteration 3"):
        fit(sae, batches(), settings, "cpu", where="toy")


def test_sizes_out_of_range():
    with pytest.raises(InputError, match="expansion_factor"):
        resolve_settings({"expansion_factor": 0})
    with pytest.raises(InputError, match="k 513 out of range 1..512"):
        check_sizes(resolve_settings({"expansion_factor": 16, "k": 513}), 32, "x")
    assert check_sizes(resolve_settings({"expansion_factor": 16, "k": 512}), 32, "x") == 512
    with pytest.raises(InputError, match="unknown key 'kk'"):
        resolve_settings({"kk": 3})


def test_reconstruction_stats_on_known_values():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) + 3.0
    acts = np.zeros((200, 5))
    acts[:, 0] = 1.0  # fires on every token: dense
    acts[:150, 1] = 2.0  # 75 %: dense at threshold 0.5
    acts[:10, 2] = 1.0  # 5 %
    perfect = ReconstructionStats(6, 5)
    perfect.update(x[:100], x[:100], acts[:100])
    perfect.update(x[100:], x[100:], acts[100:])  # streaming over two batches
    r = perfect.result(0.5)
    assert r["fraction_variance_explained"] == pytest.approx(1.0)
    assert r["mse"] == 0 and r["cosine"] == pytest.approx(1.0)
    assert r["l0"] == pytest.approx((200 + 150 + 10) / 200)
    assert r["dead_features"] == 2 and r["dense_features"] == 2
    mean_only = ReconstructionStats(6, 5)
    mean_only.update(x, np.broadcast_to(x.mean(axis=0), x.shape), acts)
    r = mean_only.result()
    assert r["fraction_variance_explained"] == pytest.approx(0.0, abs=1e-12)  # the mean explains nothing
    assert r["mse"] == pytest.approx(x.var(axis=0).mean())
