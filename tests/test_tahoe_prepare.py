"""Tahoe-x1 data preparation (ours, no model): vocab mapping, <cls> first, binning, seeded sampling."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import scipy.sparse as sp

from tissuelens.embed.tahoe import prepare as tx
from tissuelens.errors import InputError

VOCAB = {"<pad>": 0, "<cls>": 1, "<eoc>": 2, "ENSG1": 3, "ENSG2": 4, "ENSG3": 5, "ENSG4": 6}


def test_vocab_mapping_strips_versions_and_fails_when_unknown(tmp_path):
    f = tmp_path / "vocab.json"
    f.write_text(json.dumps(VOCAB))
    vocab = tx.read_vocab(f)
    assert tx.map_genes(["ensg1.7", "ENSG9", "ENSG4"], vocab, "d", 0.5).tolist() == [3, -1, 6]
    with pytest.raises(InputError, match="none of the 2 Ensembl ids .* Tahoe vocab.json"):
        tx.map_genes(["ENSG8", "ENSG9"], vocab, "d.h5ad")
    with pytest.raises(InputError, match="only 1 of 3 .*'ENSG8' is not"):
        tx.map_genes(["ENSG1", "ENSG8", "ENSG9"], vocab, "d.h5ad", 0.5)
    f.write_text(json.dumps({"<pad>": 0, "ENSG1": 1}))
    with pytest.raises(InputError, match="no '<cls>' token"):
        tx.read_vocab(f)


def test_binning_known_answer():
    # counts 1..5, num_bins 5 -> edges quantile([0, 1/3, 2/3, 1]) = [1, 2.33, 3.67, 5] -> bins 1,2,3,4,4
    values = np.array([1, 2, 3, 4, 5], dtype=np.float32)
    out = tx.bin_cells(values, np.array([0, 5]), n_bins=5)
    assert out.tolist() == [1, 2, 3, 4, 4]
    # ties share a bin, and every value lies in 1..num_bins-1
    rng = np.random.default_rng(0)
    vals = rng.integers(1, 20, size=300).astype(np.float32)
    offs = np.array([0, 100, 300])
    b = tx.bin_cells(vals, offs, n_bins=51)
    assert b.min() >= 1 and b.max() <= 50
    for lo, hi in zip(offs[:-1], offs[1:]):
        v, d = vals[lo:hi], b[lo:hi]
        assert all(len(set(d[v == u])) == 1 for u in np.unique(v))
        assert np.all(np.diff(d[np.argsort(v, kind="stable")]) >= 0)


def test_binning_equals_tahoe_per_cell_binning():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 60, size=40)
    offs = np.concatenate([[0], np.cumsum(lengths)])
    vals = (rng.negative_binomial(1, 0.2, size=offs[-1]) + 1).astype(np.float32)
    got = tx.bin_cells(vals, offs, n_bins=51)
    grades = torch.linspace(0, 1, 50, dtype=torch.float32)
    for lo, hi in zip(offs[:-1], offs[1:]):
        row = torch.as_tensor(vals[lo:hi])
        ref = torch.bucketize(row, torch.quantile(row, grades), right=False) + 1  # tahoe_x1.data.collator.binning
        assert got[lo:hi].tolist() == ref.tolist()


def test_prepare_cells_cls_first_and_sampling_is_seeded():
    counts = sp.csr_matrix(np.array([[0, 3, 1, 0, 2], [5, 0, 0, 0, 0], [1, 1, 1, 1, 1]]))
    ids = np.array([3, 4, -1, 5, 6])  # column 2 not in the vocabulary
    p = tx.prepare_cells(counts, ids, cls_id=1, pad_value=-2, max_length=10, num_bins=51)
    assert p.genes[p.offsets[0]:p.offsets[1]].tolist() == [1, 4, 6]  # <cls>, expressed in-vocab genes in order
    assert p.values[p.offsets[0]] == -2 and p.n_expressed.tolist() == [2, 1, 4]
    genes, values = p.batch(0, 3, pad_token_id=0, pad_value=-2)
    assert genes.shape == (3, 5) and genes[1].tolist() == [1, 3, 0, 0, 0] and values[1, 2:].tolist() == [-2, -2, -2]
    a = tx.prepare_cells(counts, ids, cls_id=1, max_length=3, seed=7)
    b = tx.prepare_cells(counts, ids, cls_id=1, max_length=3, seed=7)
    assert a.lengths.tolist() == [3, 2, 3] and np.array_equal(a.genes, b.genes)
    third = a.genes[a.offsets[2]:a.offsets[3]]
    assert third[0] == 1 and set(third[1:]) <= {3, 5, 6, 4} and len(set(third[1:])) == 2
    draws = {tuple(tx.prepare_cells(counts, ids, cls_id=1, max_length=3, seed=s).genes[6:]) for s in range(12)}
    assert len(draws) > 1  # the seed changes the sample


def test_random_tahoe_model_outside_its_stack_is_one_error_line(tmp_path):
    """The model call itself is tested in the Tahoe stack (tests/test_tahoe_model.py); here, without
    tahoe-x1, building a random Tahoe model says where to run it and leaves nothing behind."""
    from conftest import error_line, run_script

    if importlib.util.find_spec("tahoe_x1") is not None:
        pytest.skip("tahoe-x1 is installed in this environment")
    proc = run_script("download_model", "--model", "t", "--entry", json.dumps({"kind": "tahoe", "source": "random"}),
                      "--out", tmp_path / "t")
    assert proc.returncode == 2 and not (tmp_path / "t").exists()
    assert error_line(proc) == ("error: models: source random for kind tahoe builds a ComposerTX and needs the tahoe-x1 "
                                "package; run download_model in the Tahoe stack (workflow/envs/tahoe_cpu.yaml, workflow/envs/tahoe.yaml "
                                "or the container)")
