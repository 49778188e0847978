"""Geneformer extraction: layer and pooling semantics, input order, activation files, the embed script."""

from __future__ import annotations

import importlib.util
import json

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from helpers.geneformer_fixtures import embed_defaults, small_adata, tiny_checkpoint

from tissuelens import cli
from tissuelens.embed.activations import read_activations
from tissuelens.embed.geneformer.extract import Encoder, embed_cells, hidden_index, length_batches, pooling_mode
from tissuelens.embed.geneformer.tokenizer import GeneVocab, tokenize
from tissuelens.errors import InputError
from tissuelens.models import fetch_model
from tissuelens.models.geneformer import load_checkpoint

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def direct(ck, seq, emb_layer, mode):
    """One cell, no padding, through the full BertForMaskedLM (reference semantics)."""
    model = ck.load_model()
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states
    h = hs[ck.n_layers + emb_layer][0]
    if mode == "cls":
        return h[0].numpy()
    return (h[1:-1] if ck.special_tokens else h).mean(0).numpy()


def test_layer_and_pooling_semantics():
    assert hidden_index(-1, 6) == 5  # second-to-last layer, as EmbExtractor's default
    assert hidden_index(0, 6) == 6 and hidden_index(-6, 6) == 0
    with pytest.raises(InputError, match="embed.layer: -7 is out of range for a 6-layer model"):
        hidden_index(-7, 6)
    with pytest.raises(InputError, match="out of range"):
        hidden_index(1, 6)
    assert pooling_mode("auto", True) == "cls" and pooling_mode("auto", False) == "mean"
    with pytest.raises(InputError, match="needs a V2 checkpoint"):
        pooling_mode("cls", False)


def test_length_batches_sort_longest_first():
    lengths = np.array([3, 9, 5, 9, 1])
    assert [b.tolist() for b in length_batches(lengths, np.arange(5), 2)] == [[1, 3], [2, 0], [4]]


@pytest.mark.parametrize("version,mode,emb_layer", [("V2", "cls", -1), ("V2", "mean", -1), ("V2", "mean", 0), ("V1", "mean", -2)])
def test_embeddings_match_unpadded_reference_in_input_order(tmp_path, version, mode, emb_layer):
    ck = load_checkpoint(tiny_checkpoint(tmp_path, version))
    a = small_adata(n_cells=12)
    counts = a.layers["counts"].toarray()
    counts[5] = 0  # a cell without genes: NaN, reported, not dropped
    a.layers["counts"] = sp.csr_matrix(counts)
    tokens = tokenize(a, GeneVocab.from_checkpoint(ck))
    layer = hidden_index(emb_layer, ck.n_layers)
    enc = Encoder(ck, torch.device("cpu"), "fp32", upto=layer)
    emb = embed_cells(enc, tokens, layer=layer, pooling=mode, batch_size=5, progress=False)
    assert emb.shape == (12, 16)
    assert np.isnan(emb[5]).all() and np.isfinite(np.delete(emb, 5, 0)).all()
    for i in (0, 3, 11):
        np.testing.assert_allclose(emb[i], direct(ck, tokens.cell(i).tolist(), emb_layer, mode), atol=2e-5)
    # distinct cells get distinct embeddings (rows not mixed up by the length sort)
    assert not np.allclose(emb[0], emb[1])


def test_run_embed_outputs_and_activations(tmp_path):
    from tissuelens.embed.geneformer.run import run_embed

    a = small_adata(n_cells=30)
    h5 = tmp_path / "pre.h5ad"
    a.write_h5ad(h5)
    entry = {"kind": "geneformer", "source": "random", "random": {"version": "V2", "n_layers": 3, "hidden_size": 16, "n_heads": 2,
             "intermediate_size": 32, "max_input_size": 64, "genes_from_dataset": "d"}}
    fetch_model("gf", entry, tmp_path / "gf", genes_h5ad=str(h5))
    s = embed_defaults(batch_size=4, activations={"layers": [-1, 0], "max_cells": 10, "max_tokens_per_cell": 6},
                       consistency={"n_cells": 12, "batch_size": 3})
    info = run_embed(str(h5), str(tmp_path / "gf"), "gf", s, str(tmp_path / "e.h5ad"), str(tmp_path / "acts"), seed=0)
    out = ad.read_h5ad(tmp_path / "e.h5ad")
    assert out.obsm["X_gf"].shape == (30, 16) and list(out.obs_names) == list(a.obs_names)
    assert out.uns["embed"]["gf"]["untrained"] and info["pooling"] == "cls" and info["hidden_state_index"] == 2
    assert "spatial" in out.obsm and (out.obs["gf_n_genes"] > 0).all()
    assert info["consistency"]["mean_cosine"] > 0.999 and info["consistency"]["n_cells"] == 12

    arr, index, meta = read_activations(tmp_path / "acts", layer=3)
    assert meta["layers"] == [2, 3] and meta["untrained"] is True and meta["kind"] == "geneformer"
    assert meta["n_cells"] == 10 and meta["n_tokens"] == len(index) == 60 and meta["d_model"] == 16
    assert arr.dtype == np.float16 and arr.shape == (60, 16) and isinstance(arr, np.memmap)
    assert list(index.columns) == ["cell", "obs_name", "gene", "position"]
    first = index[index["cell"] == index["cell"].iloc[0]]
    assert first["position"].tolist() == list(range(6)) and first["gene"].iloc[0] == "<cls>"
    assert (index["obs_name"] == a.obs_names[index["cell"]]).all()
    # gene column = the token sequence (CLS, then genes in rank order)
    ck = load_checkpoint(tmp_path / "gf")
    names = ck.id_to_name()
    tokens = tokenize(a, GeneVocab.from_checkpoint(ck))
    c = int(first["cell"].iloc[0])
    assert first["gene"].tolist() == [names[t] for t in tokens.cell(c)[:6]]
    # the rows hold that cell's hidden states (layer 3 = last layer)
    model = ck.load_model()
    with torch.no_grad():
        hs = model(input_ids=torch.tensor([tokens.cell(c).tolist()]), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(arr[first.index.to_numpy()], hs[3][0, :6].numpy(), atol=2e-2, rtol=1e-2)
    arr2, _, _ = read_activations(tmp_path / "acts", layer=2)
    np.testing.assert_allclose(arr2[first.index.to_numpy()], hs[2][0, :6].numpy(), atol=2e-2, rtol=1e-2)


def _script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "workflow" / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fails(capsys, name, argv):
    with pytest.raises(SystemExit) as exc:
        cli.run(_script(name).main, [str(x) for x in argv])
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1
    return err[0]


def test_scripts_fail_with_one_clear_line(tmp_path, capsys):
    a = small_adata(n_cells=8)
    h5 = tmp_path / "pre.h5ad"
    a.write_h5ad(h5)
    ck = tiny_checkpoint(tmp_path, "V2")
    fetch_model("gf", {"kind": "geneformer", "source": "local", "path": ck}, tmp_path / "gf")
    out = ["--out", tmp_path / "e.h5ad", "--activations", tmp_path / "acts"]
    base = ["--h5ad", h5, "--checkpoint", tmp_path / "gf", "--model", "gf"]
    s = embed_defaults(gene_id_key="ensembl_id")
    line = _fails(capsys, "embed_geneformer", base + ["--settings", json.dumps(s)] + out)
    assert "pre.h5ad: var has no column 'ensembl_id'" in line
    s = embed_defaults(layer=-9)
    assert "embed.layer: -9 is out of range for a 3-layer model" in _fails(capsys, "embed_geneformer", base + ["--settings", json.dumps(s)] + out)
    line = _fails(capsys, "embed_geneformer", ["--h5ad", h5, "--checkpoint", tmp_path / "nope", "--model", "gf", "--settings", "{}"] + out)
    assert "nope: no tissuelens_model.json" in line
    assert not (tmp_path / "e.h5ad").exists() and not (tmp_path / "acts").exists()
    line = _fails(capsys, "download_model", ["--model", "x", "--entry", json.dumps({"kind": "nope", "source": "random"}), "--out", tmp_path / "m"])
    assert "model kind 'nope' is unknown" in line
    assert not (tmp_path / "m").exists()
