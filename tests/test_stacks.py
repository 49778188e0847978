"""Each rule's declared software stack, run for real (issue: every stack that a rule's conda: names runs it).

* The Loki stack (workflow/envs/loki.yaml: Python 3.9, Loki's pins, anndata 0.10.9) is built as a virtual environment
  from the env file's pip list (tests/helpers/stacks.py, cached by the file's hash) and runs the Loki rule's script
  on a preprocessed.h5ad written by the main stack.
* Cross-stack file contract: every .h5ad the main stack writes is read by the oldest reader (the Loki
  stack's anndata 0.10.9), and the Loki stack's output is read by the main stack.
* The other env files pin exactly what the main venv has, so the main venv *is* their stack; a drift fails.
"""

from __future__ import annotations

import json
import re
import sys
from importlib import metadata

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from helpers.stacks import env_spec, in_stack, stack_mismatches, stack_python

pytestmark = [pytest.mark.stack, pytest.mark.workflow]
LOKI_ENV = REPO / "workflow" / "envs" / "loki.yaml"
# envs that are not the main venv, and why they are tested the way they are
OWN_STACKS = {"loki.yaml": "built here from its pip list (Python 3.9)",
              "tahoe_cpu.yaml": "built here from its pip list and post-deploy script (tests/test_tahoe_model.py)",
              "tahoe.yaml": "needs a CUDA node to build (llm-foundry[gpu] compiles flash-attn); its rule's "
                            "preferred software is the container image; workflow/envs/tahoe_cpu.yaml is its CPU twin"}
READ_ALL = "import sys, anndata\nfor p in sys.argv[1:]:\n    a = anndata.read_h5ad(p)\n    print(p, a.shape)\n"


@pytest.fixture(scope="module")
def loki_python():
    return stack_python(LOKI_ENV)


def test_loki_stack_is_the_env_files_pins(loki_python):
    version, pins = env_spec(LOKI_ENV)
    python, _, wrong = stack_mismatches(loki_python, dict(p.split("==") for p in pins))
    assert python.startswith(version + ".")
    assert not wrong, f"the Loki stack differs from workflow/envs/loki.yaml: {wrong}"


def test_loki_rules_run_in_their_stack_on_the_demo(loki_python, demo_preprocessed, tmp_path):
    """download_model and embed_loki (the rules whose conda: is workflow/envs/loki.yaml) under Python 3.9 / anndata
    0.10.9, on the demo's preprocessed.h5ad written by the core stack, with the demo's Loki model."""
    preprocessed, config = demo_preprocessed
    entry = config["models"]["loki_tiny"]
    model = tmp_path / "loki_tiny"
    built = in_stack(loki_python, REPO / "workflow" / "scripts" / "download_model.py", "--model", "loki_tiny", "--entry", json.dumps(entry),
                     "--out", model)
    assert built.returncode == 0, built.stderr[-4000:]
    out = tmp_path / "embed"
    proc = in_stack(loki_python, REPO / "workflow" / "scripts" / "embed_loki.py", "--h5ad", preprocessed, "--model-dir", model,
                    "--model", "loki_tiny", "--settings", json.dumps({"progress": False}), "--seed", 0,
                    "--out", out / "embeddings.h5ad", "--activations", out / "activations", "--metrics", out / "metrics.json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    emb = ad.read_h5ad(out / "embeddings.h5ad")  # written by anndata 0.10.9, read by the main stack
    n = ad.read_h5ad(preprocessed, backed="r").n_obs
    text, image = emb.obsm["X_loki_text"], emb.obsm["X_loki_image"]
    assert n == 900 and text.shape[0] == n and text.shape == image.shape and np.isfinite(text).all()
    np.testing.assert_allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-4)  # L2-normalised, as Loki's
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_spots"] == n and metrics["untrained"] is True and (out / "activations" / "meta.json").exists()
    # scikit-learn and igraph are in workflow/envs/loki.yaml: the shared quality metrics run in the Loki stack itself
    assert "skipped" not in metrics["quality"], metrics["quality"]
    assert metrics["quality"]["X_loki_image"]["labels"]["n_cells"] == n
    assert metrics["image"]["patch_px"] == 20  # Loki's segment_patches size
    # the Loki task rules (annotate, retrieve, predex, decompose) in the same stack, on those embeddings
    emb_path = out / "embeddings.h5ad"
    tasks = {
        "loki_annotate": ["--embeddings", emb_path, "--preprocessed", preprocessed, "--model-dir", model, "--settings",
                          json.dumps({"markers": str(REPO / "config" / "markers" / "demo.csv"), "format": "csv", "top_n": 50}),
                          "--out", out / "annotation.parquet", "--summary", out / "annotation.json"],
        "loki_retrieve": ["--embeddings", emb_path, "--settings", json.dumps({"k": 5}), "--out", out / "retrieval.parquet",
                          "--summary", out / "retrieval.json"],
        "loki_predex": ["--embeddings", emb_path, "--preprocessed", preprocessed, "--settings",
                        json.dumps({"test_fraction": 0.2, "split": "random", "genes": "highly_variable", "report_genes": 3, "top_k": 10, "temperature": 0.1}),
                        "--genes-out", out / "predex_genes.csv", "--spots-out", out / "predex_spots.parquet", "--summary", out / "predex.json"],
    }
    tasks["loki_decompose"] = ["--embeddings", emb_path, "--reference", emb_path, "--reference-name", "demo", "--settings",
                               json.dumps({"label_key": "group", "spot_embedding": "auto", "num_epochs": 50, "device": "cpu"}),
                               "--out", out / "decompose.parquet", "--summary", out / "decompose.json"]
    for script, args in tasks.items():
        proc = in_stack(loki_python, REPO / "workflow" / "scripts" / f"{script}.py", *args)
        assert proc.returncode == 0, (script, proc.stderr[-4000:])
    assert json.loads((out / "annotation.json").read_text())["cell_types"] == ["domain_1", "domain_2", "domain_3", "domain_4"]
    assert json.loads((out / "retrieval.json").read_text())["n_query"] == n
    assert json.loads((out / "predex.json").read_text())["n_test"] == 180
    props = pd.read_parquet(out / "decompose.parquet")[["domain_1", "domain_2", "domain_3", "domain_4"]].to_numpy()
    np.testing.assert_allclose(props.sum(axis=1), 1.0, atol=1e-6)  # Tangram 1.0.4 under Python 3.9


def test_every_h5ad_the_main_stack_writes_reads_in_the_loki_stack(loki_python, finished_run):
    _, run = finished_run
    files = sorted((run / "results").rglob("*.h5ad")) + sorted((run / "resources" / "datasets").rglob("*.h5ad"))
    assert len(files) >= 4  # raw, preprocessed and embeddings of both datasets
    proc = in_stack(loki_python, "-c", READ_ALL, *files)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.count("\n") == len(files)


def test_none_in_uns_is_what_breaks_the_oldest_reader(loki_python, tmp_path):
    """Written plainly, scanpy's uns['log1p'] = {'base': None} is unreadable by anndata 0.10.9; through
    tissuelens.io it is dropped and the file reads (so the contract test above can fail)."""
    from tissuelens.io import write_h5ad

    adata = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    adata.uns["log1p"] = {"base": None}
    adata.uns["nested"] = {"keep": 1, "drop": None}
    adata.write_h5ad(tmp_path / "plain.h5ad")
    write_h5ad(adata, tmp_path / "portable.h5ad")
    plain = in_stack(loki_python, "-c", READ_ALL, tmp_path / "plain.h5ad")
    assert plain.returncode != 0 and "null" in plain.stderr
    portable = in_stack(loki_python, "-c", READ_ALL, tmp_path / "portable.h5ad")
    assert portable.returncode == 0, portable.stderr[-2000:]
    assert dict(ad.read_h5ad(tmp_path / "portable.h5ad").uns["nested"]) == {"keep": 1}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.mark.parametrize("env_file", sorted((REPO / "workflow" / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_other_envs_pin_what_the_main_venv_has(env_file):
    if env_file.name in OWN_STACKS:
        pytest.skip(f"{env_file.name}: {OWN_STACKS[env_file.name]}")
    version, pins = env_spec(env_file)
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == version, f"{env_file.name}: python={version}"
    have = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    drift = {p: have.get(_norm(p.split("==")[0])) for p in pins if have.get(_norm(p.split("==")[0])) != p.split("==")[1]}
    assert not drift, f"{env_file.name} pins differ from the main venv (installed: {drift}); build its own stack"
