"""In-silico perturbation (sequence edits, known answers, the table) and embedding metrics on known inputs."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from geneformer_fixtures import embed_defaults, gene_ids, small_adata, tiny_checkpoint

from tissuelens.embed import metrics as M
from tissuelens.embed.geneformer_extract import Encoder, embed_cells
from tissuelens.embed.geneformer_perturb import bh_fdr, perturb_cells, perturb_sequence
from tissuelens.embed.geneformer_tokenizer import TokenizedCells
from tissuelens.errors import InputError
from tissuelens.models import fetch_model
from tissuelens.models.geneformer import load_checkpoint


def test_perturb_sequence_edits():
    v2 = np.array([2, 10, 11, 12, 3])
    assert perturb_sequence(v2, 11, "delete", True, 5).tolist() == [2, 10, 12, 3]
    assert perturb_sequence(v2, 99, "delete", True, 5) is None  # not expressed: skipped
    assert perturb_sequence(v2, 12, "overexpress", True, 5).tolist() == [2, 12, 10, 11, 3]
    # inserted at the front; the last gene falls off, <eos> stays last
    assert perturb_sequence(v2, 99, "overexpress", True, 5).tolist() == [2, 99, 10, 11, 3]
    assert perturb_sequence(v2, 99, "overexpress", True, 6).tolist() == [2, 99, 10, 11, 12, 3]
    v1 = np.array([10, 11, 12])
    assert perturb_sequence(v1, 12, "overexpress", False, 3).tolist() == [12, 10, 11]
    assert perturb_sequence(v1, 99, "overexpress", False, 3).tolist() == [99, 10, 11]
    with pytest.raises(InputError, match="not one of"):
        perturb_sequence(v1, 10, "activate", False, 3)


def _tokens(seqs, special=True):
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    n_genes = np.array([len(s) - (2 if special else 0) for s in seqs])
    return TokenizedCells(np.concatenate(seqs).astype(np.int32), offsets, n_genes, special)


def test_perturbation_known_answers(tmp_path):
    ck = load_checkpoint(tiny_checkpoint(tmp_path, "V2"))
    enc = Encoder(ck, torch.device("cpu"), "fp32", upto=2)
    g = [ck.token_dict[x] for x in gene_ids(6)]
    # cells 0-1: start state [g1, g2, g3]; cells 2-3: goal state [g0, g1, g2, g3]
    start, goal_seq = [2, g[1], g[2], g[3], 3], [2, g[0], g[1], g[2], g[3], 3]
    tokens = _tokens([start, start, goal_seq, goal_seq])
    emb = embed_cells(enc, tokens, layer=2, pooling="cls", batch_size=4, progress=False)
    goal = emb[2:].mean(0)
    # overexpressing g0 turns a start cell into exactly the goal sequence: cos to goal becomes 1
    res = perturb_cells(enc, tokens, np.array([0, 1]), g[0], "overexpress", layer=2, mode="cls", max_len=64, goal=goal)
    cos_orig_goal = float(emb[0] @ goal / np.linalg.norm(emb[0]) / np.linalg.norm(goal))
    np.testing.assert_allclose(res["shift"], 1 - cos_orig_goal, atol=1e-5)
    assert (res["shift"] > 0).all()
    # overexpressing the gene already first changes nothing: cosine 1, shift 0 (mean pooling, gene excluded)
    same = perturb_cells(enc, tokens, np.array([0]), g[1], "overexpress", layer=2, mode="mean", max_len=64, goal=goal)
    np.testing.assert_allclose(same["cos_sim"], 1.0, atol=1e-6)
    np.testing.assert_allclose(same["shift"], 0.0, atol=1e-6)
    # deleting a gene a cell lacks skips the cell; deleting one it has changes its embedding
    gone = perturb_cells(enc, tokens, np.array([0, 2]), g[0], "delete", layer=2, mode="mean", max_len=64)
    assert gone["cell"].tolist() == [2] and gone["cos_sim"].iloc[0] < 1.0 and np.isnan(gone["shift"]).all()


def test_bh_fdr_known_values():
    np.testing.assert_allclose(bh_fdr(np.array([0.01, 0.04, 0.03, np.nan])), [0.03, 0.04, 0.04, np.nan])


def test_run_perturb_table(tmp_path):
    from tissuelens.embed.geneformer import run_embed, run_perturb

    a = small_adata(n_cells=24)
    h5 = tmp_path / "pre.h5ad"
    a.write_h5ad(h5)
    fetch_model("gf", {"kind": "geneformer", "source": "local", "path": tiny_checkpoint(tmp_path, "V2")}, tmp_path / "gf")
    s = embed_defaults(batch_size=8, consistency={"enabled": False}, activations={"max_cells": 2, "max_tokens_per_cell": 2},
                       perturb={"genes": ["SYM3", gene_ids(30)[4]], "goal_group": "g1", "start_group": "g0", "max_cells": 6, "batch_size": 4})
    run_embed(str(h5), str(tmp_path / "gf"), "gf", s, str(tmp_path / "e.h5ad"), str(tmp_path / "acts"))
    run_perturb(str(h5), str(tmp_path / "gf"), str(tmp_path / "e.h5ad"), "gf", s, str(tmp_path / "p.tsv"), str(tmp_path / "c.parquet"))
    table = pd.read_csv(tmp_path / "p.tsv", sep="\t")
    assert set(table["symbol"]) == {"SYM3", "SYM4"} and set(table["perturbation"]) == {"delete", "overexpress"}
    assert table["untrained"].all() and (table["tested"] == "shift_to_goal").all()
    assert table["fdr"].between(0, 1).all() and (table["fdr"] >= table["pvalue"] - 1e-12).all()
    cells = pd.read_parquet(tmp_path / "c.parquet")
    assert set(a.obs.loc[cells["obs_name"], "group"]) == {"g0"}  # start group only
    assert cells["control_gene"].notna().all() and (cells["control_gene"] != cells["gene"]).all()
    s["perturb"]["genes"] = ["NOPE"]
    with pytest.raises(InputError, match="perturb gene 'NOPE'"):
        run_perturb(str(h5), str(tmp_path / "gf"), str(tmp_path / "e.h5ad"), "gf", s, str(tmp_path / "p2.tsv"), str(tmp_path / "c2.parquet"))
    assert not (tmp_path / "p2.tsv").exists()


def test_label_metrics_on_known_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 10
    labels = np.repeat(["a", "b", "c"], 30)
    x = centres[np.repeat(np.arange(3), 30)] + rng.normal(scale=0.1, size=(90, 3)) + 1
    m = M.label_metrics(x, labels, k=5)
    assert m["knn_accuracy"] == 1.0 and m["silhouette"] > 0.9 and m["distance_ratio"] > 10
    assert m["leiden_ari"] == pytest.approx(1.0) and m["leiden_nmi"] == pytest.approx(1.0)
    # labels unrelated to the embedding: near chance
    shuffled = rng.permutation(labels)
    r = M.label_metrics(x, shuffled, k=5)
    assert r["knn_accuracy"] < 0.6 and abs(r["silhouette"]) < 0.2 and r["distance_ratio"] == pytest.approx(1.0, abs=0.1)
    # NaN rows (cells without genes) are skipped, and counted
    x[0] = np.nan
    assert M.label_metrics(x, labels, k=5)["n_cells"] == 89


def test_consistency_and_spatial_metrics():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(50, 8))
    same = M.consistency_metrics(a, a.copy(), k=5)
    assert same["mean_cosine"] == pytest.approx(1.0) and same["distance_correlation"] == pytest.approx(1.0) and same["knn_overlap"] == 1.0
    other = M.consistency_metrics(a, rng.normal(size=(50, 8)), k=5)
    assert other["mean_cosine"] < 0.5 and other["knn_overlap"] < 0.5
    # embedding = smooth function of position: spatial neighbours are more alike than random pairs
    xy = rng.uniform(0, 1, size=(200, 2))
    emb = np.column_stack([np.sin(3 * xy[:, 0]), np.cos(3 * xy[:, 1]), xy[:, 0] - 0.5])
    s = M.spatial_metrics(emb, xy, k=6)
    assert s["spatial_neighbor_cosine"] > s["random_pair_cosine"] + 0.2


def test_embedding_report_for_several_representations():
    rng = np.random.default_rng(2)
    a = ad.AnnData(obs=pd.DataFrame({"group": np.repeat(["x", "y"], 20)}, index=[f"c{i}" for i in range(40)]))
    a.obsm["X_m_text"] = rng.normal(size=(40, 4))
    a.obsm["X_m_image"] = rng.normal(size=(40, 4))
    a.uns["tissuelens_embed"] = '{"untrained": true, "kind": "loki"}'
    r = M.embedding_report(a, "m", embed_defaults()["metrics"])
    assert r["untrained"] is True and set(r["representations"]) == {"X_m_image", "X_m_text"}
    assert r["representations"]["X_m_text"]["labels"]["n_groups"] == 2
