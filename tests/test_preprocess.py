"""Preprocess filters with known counts, HVG, normalisation, and the script's bad-input behaviour."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import error_line, run_script

from tissuelens.config import step_defaults
from tissuelens.errors import InputError
from tissuelens.preprocess import preprocess

ENTRY = {"source": "local", "spatial": True, "group_key": "celltype"}
SETTINGS = {
    "min_counts": 10, "min_genes": 3, "min_cells": 2, "max_pct_mt": 50, "drop_mt_genes": False,
    "min_group_fraction": 0.05, "min_group_size": 0, "n_top_genes": None, "hvg_flavor": "seurat_v3",
    "subset_hvg": False, "target_sum": 10000, "min_transcripts": 10, "max_control_fraction": None,
    "remove_doublets": False, "spatial_graph": {},
}


def crafted():
    """82 cells, 10 genes, each oddity planted a known number of times (all oddities in group A)."""
    genes = ["MT-CO1"] + [f"G{i}" for i in range(1, 10)]
    rows, groups, coords = [], [], []

    def cell(counts, group="A", xy=(0.0, 0.0)):
        rows.append(counts)
        groups.append(group)
        coords.append(xy)

    base = [2] + [5] * 8 + [0]
    for i in range(40):
        cell(base, "A", (i, 0))
    for i in range(30):
        cell(base, "B", (i, 1))
    cell(base, "C", (0, 2))  # a one-cell group: below 5 % of cells
    rows[0] = [2] + [5] * 8 + [1]  # G9 seen in a single (kept) cell -> removed by min_cells=2
    cell(base, "A", (np.nan, 0))
    cell(base, "A", (0, np.inf))  # two cells without usable coordinates
    cell(base, np.nan)
    cell(base, "None")  # two cells with missing group labels
    for _ in range(3):
        cell([0, 1, 1, 1, 1, 1, 0, 0, 0, 0])  # 5 counts < min_counts
    for _ in range(2):
        cell([0, 20, 0, 0, 0, 0, 0, 0, 0, 0])  # one gene < min_genes
    for _ in range(2):
        cell([40, 5, 5, 5, 0, 0, 0, 0, 0, 0])  # 73 % mitochondrial
    adata = ad.AnnData(
        X=sp.csr_matrix(np.array(rows, dtype=np.int32)),
        obs=pd.DataFrame({"celltype": groups}, index=[f"c{i}" for i in range(len(rows))]),
        var=pd.DataFrame(index=genes),
    )
    adata.obsm["spatial"] = np.array(coords, dtype=float)
    return adata


def test_each_filter_removes_the_planted_cells_and_genes():
    out, report = preprocess(crafted(), ENTRY, SETTINGS, "crafted.h5ad")
    assert report["n_cells_raw"] == 82 and report["n_genes_raw"] == 10
    assert report["cells_removed"] == {
        "nan_coordinates": 2, "nan_expression": 0, "missing_group": 2,
        "min_counts": 3, "min_genes": 2, "max_pct_mt": 2, "small_groups": 1,
    }
    assert report["genes_removed"] == {"min_cells": 1}
    assert report["groups_removed"] == ["C"]
    assert (report["n_cells"], report["n_genes"]) == (70, 9) == out.shape
    assert report["groups"] == {"A": 40, "B": 30}
    assert list(out.obs["group"].cat.categories) == ["A", "B"]
    assert "G9" not in out.var_names


def test_counts_kept_and_x_log_normalised():
    out, _ = preprocess(crafted(), ENTRY, SETTINGS, "crafted.h5ad")
    counts = out.layers["counts"].toarray()
    assert np.issubdtype(counts.dtype, np.integer)
    expected = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(out.X.toarray(), expected, rtol=1e-5)
    assert out.var["highly_variable"].all()  # n_top_genes null: every gene
    assert out.obsm["spatial"].shape == (70, 2)


def test_min_group_size_and_drop_mt_genes():
    settings = {**SETTINGS, "min_group_fraction": 0.0, "min_group_size": 35, "drop_mt_genes": True}
    out, report = preprocess(crafted(), ENTRY, settings, "crafted.h5ad")
    assert report["groups_removed"] == ["B", "C"]
    assert report["cells_removed"]["small_groups"] == 31
    assert report["genes_removed"] == {"min_cells": 1, "mt_genes": 1}
    assert "MT-CO1" not in out.var_names and out.n_obs == 40


def test_highly_variable_genes_on_counts(small_synthetic):
    settings = {**SETTINGS, "max_pct_mt": None, "n_top_genes": 20, "min_cells": 0}
    entry = {"source": "synthetic", "spatial": True, "group_key": "group"}
    out, report = preprocess(small_synthetic.copy(), entry, settings, "demo")
    assert report["n_highly_variable"] == 20 == out.var["highly_variable"].sum()
    subset, _ = preprocess(small_synthetic.copy(), entry, {**settings, "subset_hvg": True}, "demo")
    assert subset.n_vars == 20 and subset.var["highly_variable"].all()


def test_filters_removing_every_cell():
    # the QC filters run before the missing-group filter: the 2 unlabelled cells count under min_counts
    with pytest.raises(InputError, match=r"crafted.h5ad: filters removed every cell \(nan_coordinates: 2, min_counts: 80\)"):
        preprocess(crafted(), ENTRY, {**SETTINGS, "min_counts": 10_000}, "crafted.h5ad")


def test_defaults_come_from_the_schema():
    defaults = step_defaults("preprocess")
    assert set(defaults) == set(SETTINGS)


def _run(tmp_path, raw, entry, settings):
    out, qc = tmp_path / "out" / "preprocessed.h5ad", tmp_path / "out" / "qc.json"
    proc = run_script("preprocess", "--raw", raw, "--entry", json.dumps(entry), "--settings", json.dumps(settings), "--out", out, "--qc", qc)
    return proc, out, qc


def test_script_writes_both_outputs(tmp_path):
    raw = tmp_path / "raw.h5ad"
    crafted().write_h5ad(raw)
    proc, out, qc = _run(tmp_path, raw, ENTRY, SETTINGS)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(qc.read_text())["n_cells"] == 70
    assert ad.read_h5ad(out).shape == (70, 9)


def test_script_leaves_nothing_when_every_cell_is_removed(tmp_path):
    raw = tmp_path / "raw.h5ad"
    crafted().write_h5ad(raw)
    proc, out, qc = _run(tmp_path, raw, ENTRY, {**SETTINGS, "min_counts": 10_000})
    assert proc.returncode == 2
    assert f"{raw}: filters removed every cell" in error_line(proc)
    assert not out.exists() and not qc.exists()


def test_script_rejects_a_corrupt_raw_file(tmp_path):
    raw = tmp_path / "raw.h5ad"
    raw.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    proc, out, qc = _run(tmp_path, raw, ENTRY, SETTINGS)
    assert proc.returncode == 2
    assert f"{raw}: not a readable .h5ad file" in error_line(proc)
    assert not out.exists() and not qc.exists()
