"""CUDA paths against their CPU results: Geneformer extraction and perturbation in bf16/fp16, PNMF-GP and SAE
training on the GPU, the narrative model on the GPU. Skipped without a CUDA device; `make gpu-check` runs them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.geneformer_fixtures import small_adata, tiny_checkpoint

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def geneformer(tmp_path_factory):
    from tissuelens.embed.geneformer.tokenizer import GeneVocab, tokenize
    from tissuelens.models.geneformer import load_checkpoint

    ck = load_checkpoint(tiny_checkpoint(tmp_path_factory.mktemp("gf"), "V2"))
    return ck, tokenize(small_adata(n_cells=24), GeneVocab.from_checkpoint(ck))


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_geneformer_extraction_on_cuda_matches_cpu(geneformer, precision):
    from tissuelens.embed.geneformer.extract import Encoder, embed_cells

    ck, tokens = geneformer
    layer = ck.n_layers - 1
    ref = embed_cells(Encoder(ck, CPU, "fp32", upto=layer), tokens, layer=layer, pooling="mean", batch_size=8, progress=False)
    got = embed_cells(Encoder(ck, GPU, precision, upto=layer), tokens, layer=layer, pooling="mean", batch_size=8, progress=False)
    assert got.dtype == np.float32 and got.shape == ref.shape and np.isfinite(got).all()
    assert _cosines(ref, got).min() > (0.9999 if precision == "fp32" else 0.99)


def test_geneformer_perturbation_on_cuda_matches_cpu(geneformer):
    from tissuelens.embed.geneformer.extract import Encoder
    from tissuelens.embed.geneformer.perturb import Job, score_jobs

    ck, tokens = geneformer
    gene = int(tokens.cell(0)[2])  # a gene the first cells express
    jobs = [Job(c, (gene,), kind) for c in range(8) for kind in ("delete", "overexpress")]
    runs = [score_jobs(Encoder(ck, dev, prec, upto=2), tokens, jobs, layer=2, emb_mode="cls_and_gene", max_len=64, batch_size=5)
            for dev, prec in ((CPU, "fp32"), (GPU, "bf16"))]
    assert [s is None for s in runs[0]] == [s is None for s in runs[1]] and any(s is not None for s in runs[0])
    done = [i for i, s in enumerate(runs[0]) if s is not None]
    np.testing.assert_allclose([runs[1][i].cos_sim for i in done], [runs[0][i].cos_sim for i in done], atol=2e-2)
    np.testing.assert_allclose(np.concatenate([runs[1][i].gene_cos for i in done]),
                               np.concatenate([runs[0][i].gene_cos for i in done]), atol=2e-2)


@pytest.mark.parametrize("variant", ["svgp", "lcgp"])
def test_factorize_trains_on_cuda_like_cpu(variant):
    from helpers.factorize_fixtures import demo_adata, settings

    from tissuelens.factorize.data import load_factor_data
    from tissuelens.factorize.model import build_model
    from tissuelens.factorize.train import Trainer

    adata = demo_adata(n_spots=150, n_genes=40, seed=3)
    s = settings(n_factors=3, n_inducing=30, n_neighbors=5, max_iter=20, lr_schedule="constant", learning_rate=0.01)
    history = {}
    for dev in (CPU, GPU):
        data = load_factor_data(adata, s, variant, s["seed"], "small")
        torch.manual_seed(0)
        history[dev.type] = Trainer(build_model(variant, data, s), data, s, variant, dev).fit().history
    cpu, gpu = np.array(history["cpu"]), np.array(history["cuda"])
    assert gpu.shape == cpu.shape == (20,) and np.isfinite(gpu).all()
    np.testing.assert_allclose(gpu, cpu, rtol=5e-2)  # Monte Carlo draws differ in order of operations only


def test_sae_trains_on_cuda():
    from tissuelens.sae.activations import ShuffledBatches
    from tissuelens.sae.settings import resolve_settings
    from tissuelens.sae.synthetic import sparse_codes, unit_directions
    from tissuelens.sae.train import build_training_sae, fit, seed_everything

    rng = np.random.default_rng(0)
    x = (sparse_codes(8000, 48, 3, rng) @ unit_directions(48, 32, rng)).astype(np.float32)
    settings = resolve_settings(dict(expansion_factor=4, k=4, lr=0.003, training_tokens=40_000, batch_size=512, device="cuda"))
    seed_everything(0)
    sae = build_training_sae(settings, 32, device="cuda", metadata={"model_name": "toy", "hook_name": "layer_0"})
    result = fit(sae, ShuffledBatches(x, np.arange(len(x)), 512, 0, device="cuda"), settings, "cuda")
    losses = result.history["loss"].to_numpy()
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
    assert next(result.sae.parameters()).device.type == "cuda"


def test_narrative_model_on_cuda(tmp_path):
    from conftest import run_script
    from helpers.report_fixtures import report_defaults, write_preprocessed
    from test_narrative_model import build_tiny_medgemma

    checkpoint = build_tiny_medgemma(tmp_path / "tiny-medgemma")
    qc, h5ad = write_preprocessed(tmp_path / "data", n_spots=80, n_genes=30)
    settings = {**report_defaults()["narrative"], "checkpoint": str(checkpoint), "device": "cuda", "max_new_tokens": 6}
    out = tmp_path / "narrative.json"
    run_script("narrative", "--dataset", "demo", "--entry", json.dumps({"source": "synthetic"}), "--qc", qc,
               "--preprocessed", h5ad, "--plan", "{}", "--settings", json.dumps(settings), "--out", out, check=True)
    rec = json.loads(out.read_text())
    assert rec["mode"] == "model" and isinstance(rec["text"], str) and rec["model"]["device"].startswith("cuda")
