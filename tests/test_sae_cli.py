"""workflow/scripts/train_sae.py and workflow/scripts/analyze_sae.py on a planted export: outputs, and bad input."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_script

from tissuelens import cli
from tissuelens.sae.synthetic import write_export

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"expansion_factor": 4, "k": 4, "lr": 0.003, "training_tokens": 60000, "batch_size": 256,
            "eval_tokens": 500, "dashboard_features": 6, "device": "cpu"}


def _script(name):
    spec = importlib.util.spec_from_file_location(f"script_{name}", ROOT / "workflow" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_argv(acts, out, settings=SETTINGS):
    return ["--activations", str(acts), "--settings", json.dumps(settings), "--seed", "0", "--threads", "1",
            "--out-sae", str(out / "sae"), "--metrics", str(out / "metrics.json"),
            "--history", str(out / "training_log.tsv"), "--loss-curve", str(out / "loss_curve.png")]


def _analyze_argv(acts, pre, out, factors=None, settings=SETTINGS):
    argv = ["--sae", str(out / "sae"), "--activations", str(acts), "--preprocessed", str(pre),
            "--metrics", str(out / "metrics.json"), "--loss-curve", str(out / "loss_curve.png"),
            "--settings", json.dumps(settings), "--threads", "1",
            "--out-features", str(out / "features.parquet"), "--out-genes", str(out / "feature_genes.parquet"),
            "--out-groups", str(out / "feature_groups.parquet"), "--out-factors", str(out / "feature_factors.parquet"),
            "--out-dashboard", str(out / "dashboard.html"), "--out-cell-activations", str(out / "cell_activations.npz")]
    return argv + (["--factors", str(factors)] if factors else [])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("sae_cli")
    planted = write_export(base / "activations", n_side=12, n_genes=30, tokens_per_cell=12, d_model=24,
                           n_gene_dirs=12, preprocessed=base / "preprocessed.h5ad", factors=base / "factors.npy")
    return base, planted


@pytest.fixture(scope="module")
def built(data):
    import torch

    base, planted = data
    out = base / "results" / "sae" / "toy"
    threads = torch.get_num_threads()
    try:
        argv = _train_argv(base / "activations", out, {**SETTINGS, "n_checkpoints": 2})
        _script("train_sae").main(argv + ["--checkpoints", str(out / "checkpoints")])
        _script("analyze_sae").main(_analyze_argv(base / "activations", base / "preprocessed.h5ad", out,
                                                  factors=base / "factors.npy"))
    finally:
        torch.set_num_threads(threads)
    return out, planted


def test_training_outputs(built):
    from sae_lens import SAE

    out, _ = built
    sae = SAE.load_from_disk(str(out / "sae"))
    assert sae.cfg.d_in == 24 and sae.cfg.d_sae == 96 and sae.cfg.metadata.layer == 1
    m = json.loads((out / "metrics.json").read_text())
    for key in ("l0", "fraction_variance_explained", "mse", "dead_features", "dense_features"):
        assert key in m
    assert m["l0"] == pytest.approx(4.0) and m["fraction_variance_explained"] > 0.8
    assert m["untrained_model"] is True and m["n_eval_tokens"] == 1728 // 5  # capped at a fifth of the tokens
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert len(pd.read_csv(out / "training_log.tsv", sep="\t")) == m["training_steps"]
    assert not (out / "checkpoints").exists()  # written during training, removed once it completed


def test_features_find_the_planted_group_and_spatial_signals(built):
    out, planted = built
    feats = pd.read_parquet(out / "features.parquet")
    assert len(feats) == 96 and feats.feature.tolist() == list(range(96))
    live = feats[~feats.dead]
    # the group direction fires only in group A cells
    assert ((live.top_group == "A") & (live.top_group_auroc > 0.95)).any()
    # the spatial direction follows the left-to-right gradient = factor 0 of factors.npy
    spatial = live[(live.best_factor == 0) & (live.best_factor_r > 0.8)]
    assert len(spatial) and (spatial.moran_i > 0.5).all()
    genes = pd.read_parquet(out / "feature_genes.parquet")
    assert set(genes.columns) >= {"feature", "gene", "symbol", "mean_activation", "log2_enrichment", "share"}
    assert genes.symbol.str.startswith("GENE").all()  # Ensembl ids mapped to symbols via preprocessed.h5ad
    # each gene direction has a feature whose top gene writes it
    top = genes[genes.rank_mean == 1]
    gene_dir = dict(zip(planted.symbols, planted.gene_direction))
    hit = {gene_dir[s] for s in top.symbol}
    assert len(hit) >= 10  # of 12 gene directions
    groups = pd.read_parquet(out / "feature_groups.parquet")
    assert len(groups) == 96 * 4 and set(groups.group) == {"A", "B", "C", "D"}
    factors = pd.read_parquet(out / "feature_factors.parquet")
    assert len(factors) == 96 * 2
    import scipy.sparse as sp

    cells = sp.load_npz(out / "cell_activations.npz")
    assert cells.shape == (144, 96)  # preprocessed cells x features
    assert np.load(out / "cell_activations.npz")["exported"].all()  # every cell's tokens were exported
    spatial_feature = int(spatial.feature.iloc[0])
    r = np.corrcoef(cells[:, spatial_feature].toarray().ravel(), planted.spatial_signal)[0, 1]
    assert r > 0.8


def test_dashboard_is_self_contained(built):
    out, _ = built
    page = (out / "dashboard.html").read_text()
    assert page.count("data:image/png;base64,") >= 1 + 6 * 3  # loss curve + 3 images per detail panel
    assert 'class="sortable"' in page and "sortTable" in page
    assert "untrained" in page
    assert "src='http" not in page and 'src="http' not in page  # nothing fetched from outside


def _run(main, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.run(main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    return exc.value.code, [line for line in err if line.startswith("error:")], err


def _broken_copy(src, dst, breakage):
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    if breakage == "missing_layer":
        (dst / "layer_1.npy").unlink()
    elif breakage == "index_mismatch":
        pd.read_parquet(dst / "index.parquet").iloc[:-5].to_parquet(dst / "index.parquet")
    elif breakage == "nan":
        x = np.load(dst / "layer_1.npy")
        x[40, 0] = np.nan
        np.save(dst / "layer_1.npy", x)
    return dst


@pytest.mark.parametrize(
    "case, settings, message",
    [
        ("missing_dir", {}, "activations directory does not exist"),
        ("missing_layer", {}, "layer_1.npy: missing"),
        ("index_mismatch", {}, "rows but layer_1.npy holds"),
        ("nan", {}, "at token row 40"),
        ("ok", {"expansion_factor": 0}, "expansion_factor: 0 is less than the minimum of 1"),
        ("ok", {"expansion_factor": 1000}, "expansion_factor: 1000 is greater than the maximum of 256"),
        ("ok", {"k": 0}, "k: 0 is less than the minimum of 1"),
        ("ok", {"expansion_factor": 2, "k": 49}, "k 49 out of range 1..48"),
        ("ok", {"layer": 7}, "has no exported layer 7"),
        ("ok", {"layer": -3}, "layer -3 out of range"),
    ],
)
def test_bad_input_one_error_line_no_output(data, tmp_path, capsys, case, settings, message):
    base, _ = data
    acts = tmp_path / "activations"
    if case == "ok":
        acts = base / "activations"
    elif case != "missing_dir":
        _broken_copy(base / "activations", acts, case)
    out = tmp_path / "results" / "sae" / "toy"
    code, errors, err = _run(_script("train_sae").main, _train_argv(acts, out, {**SETTINGS, **settings}), capsys)
    assert code == 2
    assert len(errors) == 1 and message in errors[0], err
    assert not (tmp_path / "results").exists()


def test_analyze_bad_input(data, built, tmp_path, capsys):
    base, _ = data
    sae_out, _ = built
    out = tmp_path / "results" / "sae" / "toy"
    argv = _analyze_argv(base / "activations", tmp_path / "nope.h5ad", out)
    argv[argv.index("--sae") + 1] = str(sae_out / "sae")
    code, errors, _ = _run(_script("analyze_sae").main, argv, capsys)
    assert code == 2 and len(errors) == 1 and "nope.h5ad: file not found" in errors[0]
    bad = tmp_path / "factors.npy"
    np.save(bad, np.zeros((5, 2)))
    argv = _analyze_argv(base / "activations", base / "preprocessed.h5ad", out, factors=bad)
    argv[argv.index("--sae") + 1] = str(sae_out / "sae")
    code, errors, _ = _run(_script("analyze_sae").main, argv, capsys)
    assert code == 2 and len(errors) == 1 and "5 rows but the preprocessed data has 144 cells" in errors[0]
    assert not (tmp_path / "results").exists()


def test_script_process_exit_code_and_single_line(data, tmp_path):
    base, _ = data
    acts = _broken_copy(base / "activations", tmp_path / "activations", "nan")
    out = tmp_path / "results" / "sae" / "toy"
    proc = run_script("train_sae", *_train_argv(acts, out))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {acts / 'layer_1.npy'}: non-finite activation (NaN or inf) at token row 40"]
    assert not (tmp_path / "results").exists()
