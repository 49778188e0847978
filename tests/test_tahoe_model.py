"""Tahoe-x1 called for real on the CPU, in its own stack.

The stack is workflow/envs/tahoe_cpu.yaml (llm-foundry 0.22.0 without its [gpu] extra, torch 2.7.0) plus its
post-deploy script (tahoe-x1 1.0.0 with --no-deps), built as a virtual environment by tests/helpers/stacks.py and
cached by the two files' hash (about 4-5 minutes and 7.5 GB the first time: PyPI has only the CUDA
build of torch 2.7.0; then reused). The model is a tiny untrained ComposerTX of tahoe-x1's own classes,
written in the Hub's layout by download_model and loaded back through the loader a Hub checkpoint goes
through. Code that needs the stack runs there as a
subprocess (tests/helpers/tahoe_probe.py, the rule scripts); the values are checked here.
"""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from conftest import REPO
from helpers.stacks import env_spec, in_stack, stack_mismatches, stack_python

pytestmark = [pytest.mark.stack, pytest.mark.workflow]
TAHOE_ENV = REPO / "workflow" / "envs" / "tahoe_cpu.yaml"
PROBE = REPO / "tests" / "helpers" / "tahoe_probe.py"


@pytest.fixture(scope="module")
def tahoe_python():
    return stack_python(TAHOE_ENV)


def probe(python, what: str, workdir) -> dict:
    proc = in_stack(python, PROBE, what, workdir)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_tahoe_stack_is_the_env_files_pins_without_flash_attn(tahoe_python):
    version, pins = env_spec(TAHOE_ENV)
    wanted = dict(p.split("==") for p in pins) | {"tahoe-x1": "1.0.0"}  # the post-deploy script's
    python, flash, wrong = stack_mismatches(tahoe_python, wanted)
    assert python.startswith(version + ".") and not flash
    assert not wrong, f"the Tahoe stack differs from workflow/envs/tahoe_cpu.yaml: {wrong}"


def test_upstream_encoder_needs_flash_attn(tahoe_python, tmp_path):
    """Why tissuelens replaces the encoder's forward for torch attention: tahoe-x1 1.0.0's own
    TXEncoder.forward fails on every batch without flash-attn, with or without use_attn_mask (if a later
    tahoe-x1 fixes this, this test says so and the adaptation can go)."""
    out = probe(tahoe_python, "upstream", tmp_path)
    assert set(out) == {"True", "False"}
    for result in out.values():
        assert result == "NameError: name 'bert_padding' is not defined"


def test_padded_batch_gives_each_cell_its_embedding_alone(tahoe_python, tmp_path):
    """12 cells of 12 lengths in one padded batch vs each cell alone, torch attention, fp32: the cell
    embeddings (cls and avg-pool) and every token's layer outputs agree within 1e-5; with the padding
    left unmasked they differ by far more, so the comparison can fail."""
    out = probe(tahoe_python, "padding", tmp_path)
    for style in ("cls", "avg-pool"):
        r = out[style]
        assert len(set(r["lengths"])) == 12 and r["weights"] == "model.safetensors"
        assert (r["d_model"], r["n_layers"]) == (32, 2)
        assert r["max_diff"] < 1e-5, (style, r)
        assert r["token_max_diff"] < 1e-5, (style, r)
        assert r["unmasked_max_diff"] > 1e-2, (style, r)
        assert r["spread"] > 1e-2  # the cells' embeddings are not all the same vector
        np.testing.assert_allclose(r["norms"], 1.0, atol=1e-6)


def _embed(python, preprocessed, model, out, settings):
    return in_stack(python, REPO / "workflow" / "scripts" / "embed_tahoe.py", "--h5ad", preprocessed, "--model-dir", model,
                    "--model", "tahoe_tiny", "--settings", json.dumps(settings), "--seed", 0,
                    "--out", out / "embeddings.h5ad", "--activations", out / "activations", "--metrics", out / "metrics.json")


def test_download_model_and_embed_tahoe_run_in_their_stack_on_the_demo(tahoe_python, demo_preprocessed, tmp_path):
    """download_model builds config.yaml's tahoe_tiny (random, vocabulary from the demo) in the Hub's
    layout; embed_tahoe embeds the demo with it in the stack; outputs read in the main stack. Batches of
    64 and of 7 (each cell padded to other widths) give the same embeddings; a bad setting fails with one
    error line and no output."""
    preprocessed, config = demo_preprocessed
    model = tmp_path / "tahoe_tiny"
    built = in_stack(tahoe_python, REPO / "workflow" / "scripts" / "download_model.py", "--model", "tahoe_tiny",
                     "--entry", json.dumps(config["models"]["tahoe_tiny"]), "--genes-h5ad", preprocessed, "--out", model)
    assert built.returncode == 0, built.stderr[-4000:]
    assert {p.name for p in model.iterdir()} == {"vocab.json", "model_config.yml", "collator_config.yml", "model.safetensors",
                                                  "tissuelens_model.json"}
    vocab = json.loads((model / "vocab.json").read_text())
    assert [vocab[t] for t in ("<pad>", "<cls>", "<eoc>")] == [0, 1, 2]

    runs = {}
    for bs in (64, 7):
        out = tmp_path / f"embed{bs}"
        proc = _embed(tahoe_python, preprocessed, model, out, {"progress": False, "precision": "fp32", "batch_size": bs})
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs[bs] = ad.read_h5ad(out / "embeddings.h5ad")
    emb = runs[64].obsm["X_tahoe_tiny"]
    np.testing.assert_allclose(emb, runs[7].obsm["X_tahoe_tiny"], atol=1e-5)  # other batches, other padding
    np.testing.assert_array_equal(emb, runs[64].obsm["X_tahoe"])

    pre = ad.read_h5ad(preprocessed)
    assert emb.shape == (pre.n_obs, 32) == (900, 32) and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.abs(emb - emb.mean(axis=0)).max() > 1e-2
    assert list(runs[64].obs_names) == list(pre.obs_names)
    np.testing.assert_array_equal(runs[64].obsm["spatial"], pre.obsm["spatial"])
    # tokens per cell: <cls> + the cell's expressed genes that are in the model's vocabulary
    known = np.array([g.split(".")[0].upper() in vocab for g in pre.var["gene_ids"]])
    expressed = (sp.csr_matrix(pre.layers["counts"])[:, known] > 0).sum(axis=1).A1
    np.testing.assert_array_equal(runs[64].obs["tahoe_n_tokens"].to_numpy(), expressed + 1)

    out = tmp_path / "embed64"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_cells"] == 900 and metrics["untrained"] is True and metrics["kind"] == "tahoe"
    assert metrics["tokens_per_cell"]["max"] == int(expressed.max()) + 1
    meta = json.loads((out / "activations" / "meta.json").read_text())
    assert meta["untrained"] is True
    layer = np.load(out / "activations" / "layer_1.npy", mmap_mode="r")
    assert layer.dtype == np.float16 and layer.shape == (int(expressed.sum()) + 900, 32)

    bad = _embed(tahoe_python, preprocessed, model, tmp_path / "bad", {"progress": False, "layers": [5]})
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("error:")]
    assert bad.returncode != 0 and errors == [f"error: {preprocessed}: embed.tahoe.layers [5] out of range; the model has 2 layers"]
    assert not (tmp_path / "bad" / "embeddings.h5ad").exists() and not (tmp_path / "bad" / "activations").exists()
