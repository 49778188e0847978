"""Model registry and Geneformer checkpoints: random builds, version detection, safe dictionaries,
Hugging Face cache download, local copies, corrupt checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers.geneformer_fixtures import gene_ids, small_adata, tiny_checkpoint

from tissuelens.errors import InputError
from tissuelens.models import fetch_model, load_model_dir, model_entry, random_settings
from tissuelens.models.geneformer import build_random, load_checkpoint
from tissuelens.models.hub import download_huggingface
from tissuelens.models.pickles import load_dict_pickle


@pytest.mark.parametrize("version,size,specials", [("V1", 2048, 0), ("V2", 4096, 2)])
def test_random_checkpoint_layout_and_version(tmp_path, version, size, specials):
    ids = gene_ids(12)
    out = build_random(tmp_path / version, ids, {g: 1.5 for g in ids}, version=version, n_layers=2, hidden_size=8, n_heads=2, intermediate_size=16)
    names = sorted(p.name for p in out.iterdir())
    assert "config.json" in names and "model.safetensors" in names
    assert any(n.startswith("token_dictionary_") and n.endswith(".pkl") for n in names)
    assert any(n.startswith("gene_median_dictionary_") for n in names)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["BertForMaskedLM"] and cfg["hidden_act"] == "relu" and cfg["max_position_embeddings"] == size
    ck = load_checkpoint(out)
    assert ck.version == version and ck.model_input_size == size and ck.special_tokens == bool(specials)
    assert ck.token_dict["<pad>"] == 0 and ck.token_dict["<mask>"] == 1
    # genes in sorted id order right after the special tokens, as in the real dictionaries
    assert [ck.token_dict[g] for g in sorted(ids)] == list(range(2 + specials, 2 + specials + 12))
    model = ck.load_model()
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == 14 + specials


def test_version_is_read_from_dictionaries_not_names(tmp_path):
    # a V2-built directory whose dictionary loses <cls>/<eos> is V1, whatever it is called
    src = Path(tiny_checkpoint(tmp_path, "V2"))
    dst = tmp_path / "Geneformer-V2-looking-name"
    shutil.copytree(src, dst)
    tok_file = next(dst.glob("token_dictionary_*.pkl"))
    tok = load_dict_pickle(tok_file)
    del tok["<cls>"], tok["<eos>"]
    tok_file.write_bytes(pickle.dumps(tok))
    assert load_checkpoint(dst).version == "V1"
    del tok["<pad>"]
    tok_file.write_bytes(pickle.dumps(tok))
    with pytest.raises(InputError, match="no '<pad>' token"):
        load_checkpoint(dst)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_restricted_unpickler(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "token_dictionary_x.pkl"
    evil.write_bytes(pickle.dumps({"ENSG1": _Evil()}))
    with pytest.raises(InputError, match=r"global 'posix.system' is not allowed|global 'os.system' is not allowed"):
        load_dict_pickle(evil)
    assert not (tmp_path / "PWNED").exists()
    # the real V1 dictionaries hold numpy int16 values: accepted, returned as plain ints
    ok = tmp_path / "ok.pkl"
    ok.write_bytes(pickle.dumps({"<pad>": np.int16(0), "ENSG1": np.int16(7), "m": np.float64(2.5)}, protocol=2))
    assert load_dict_pickle(ok) == {"<pad>": 0, "ENSG1": 7, "m": 2.5}
    assert type(load_dict_pickle(ok)["ENSG1"]) is int
    # a list is not a dictionary
    bad = tmp_path / "list.pkl"
    bad.write_bytes(pickle.dumps(["a"]))
    with pytest.raises(InputError, match="expected a pickled dict"):
        load_dict_pickle(bad)


def test_json_dictionaries_are_accepted(tmp_path):
    src = Path(tiny_checkpoint(tmp_path, "V2"))
    dst = tmp_path / "json"
    shutil.copytree(src, dst)
    for f in dst.glob("*.pkl"):
        f.with_suffix(".json").write_text(json.dumps(load_dict_pickle(f)))
        f.unlink()
    assert load_checkpoint(dst).version == "V2"


def test_random_source_round_trip_through_fetch(tmp_path):
    a = small_adata(n_genes=25)
    h5 = tmp_path / "pre.h5ad"
    a.write_h5ad(h5)
    entry = {"kind": "geneformer", "source": "random", "random": {"version": "V1", "hidden_size": 8, "n_heads": 2,
             "genes_from_dataset": "demo", "gene_fraction": 0.8, "extra_genes": 5, "seed": 3}}
    ck = fetch_model("gf", entry, tmp_path / "models" / "gf", genes_h5ad=str(h5))
    assert ck.untrained and ck.version == "V1" and ck.model_input_size == 2048
    genes = set(ck.gene_tokens)
    data_ids = set(a.var["gene_ids"])
    assert len(genes & data_ids) == 20 and len(genes - data_ids) == 5  # 80 % of the data's genes + 5 extra
    # medians of data genes are the non-zero CP10k medians of this dataset
    counts = a.layers["counts"].toarray().astype(float)
    cp10k = counts / counts.sum(1, keepdims=True) * 1e4
    g = sorted(genes & data_ids)[0]
    j = list(a.var["gene_ids"]).index(g)
    assert ck.median_dict[g] == pytest.approx(np.median(cp10k[counts[:, j] > 0, j]))
    manifest = json.loads((tmp_path / "models" / "gf" / "tissuelens_model.json").read_text())
    assert manifest["untrained"] is True and manifest["kind"] == "geneformer" and manifest["checkpoint"]["version"] == "V1"
    # the same loader a downloaded checkpoint goes through
    assert load_model_dir(tmp_path / "models" / "gf").describe()["n_genes"] == 25
    # same seed, same weights
    again = fetch_model("gf", entry, tmp_path / "models" / "gf2", genes_h5ad=str(h5))
    w1, w2 = (p.joinpath("model.safetensors").read_bytes() for p in (tmp_path / "models" / "gf", tmp_path / "models" / "gf2"))
    assert w1 == w2 and again.token_dict == ck.token_dict


def test_schema_defaults_drive_random_settings():
    s = random_settings({"kind": "geneformer", "source": "random"})
    assert s["version"] == "V2" and s["n_layers"] >= 1 and s["gene_fraction"] == 1.0


def _fake_hub_cache(cache: Path, repo_id: str, model_dir: Path, commit: str = "a" * 40) -> None:
    """The Hugging Face cache layout: models--org--name/{refs/main, snapshots/<commit>/...}."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    snap = root / "snapshots" / commit
    (snap / "Geneformer-V2-tiny").mkdir(parents=True)
    (snap / "geneformer").mkdir()
    for f in model_dir.iterdir():
        dest = snap / ("geneformer" if "dict" in f.name else "Geneformer-V2-tiny") / f.name
        shutil.copy(f, dest)
    cfg = json.loads((snap / "Geneformer-V2-tiny" / "config.json").read_text())
    cfg.pop("tissuelens_untrained")  # stands in for a trained upstream checkpoint
    (snap / "Geneformer-V2-tiny" / "config.json").write_text(json.dumps(cfg))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)


def test_huggingface_download_from_cache_offline(tmp_path):
    ck_dir = Path(tiny_checkpoint(tmp_path, "V2"))
    cache = tmp_path / "hf"
    _fake_hub_cache(cache, "someone/Geneformer", ck_dir)
    entry = {"kind": "geneformer", "source": "huggingface", "repo_id": "someone/Geneformer",
             "subfolder": "Geneformer-V2-tiny", "dictionaries": "geneformer"}
    ck = fetch_model("gf", entry, tmp_path / "out", cache_dir=str(cache), local_files_only=True)
    assert ck.version == "V2" and not ck.untrained
    assert (tmp_path / "out" / "config.json").is_file() and list((tmp_path / "out").glob("token_dictionary_*.pkl"))
    manifest = json.loads((tmp_path / "out" / "tissuelens_model.json").read_text())
    assert manifest["repo_id"] == "someone/Geneformer" and manifest["untrained"] is False
    # not cached and offline: one clear error, nothing written
    with pytest.raises(InputError, match="not in the local Hugging Face cache"):
        download_huggingface("someone/Other", tmp_path / "x", cache_dir=str(cache), local_files_only=True)
    # a wrong checksum is refused and leaves no output
    bad = dict(entry, sha256={"config.json": "0" * 64})
    with pytest.raises(InputError, match="config.json: sha256 .* does not match"):
        fetch_model("gf", bad, tmp_path / "out2", cache_dir=str(cache), local_files_only=True)
    assert not (tmp_path / "out2").exists()


def test_local_source_and_corrupt_checkpoints(tmp_path):
    src = Path(tiny_checkpoint(tmp_path, "V1"))
    ck = fetch_model("gf", {"kind": "geneformer", "source": "local", "path": str(src)}, tmp_path / "local")
    assert ck.version == "V1" and ck.untrained  # a random build stays marked untrained when copied
    broken = tmp_path / "broken"
    shutil.copytree(src, broken)
    (broken / "config.json").write_text("{not json")
    with pytest.raises(InputError, match=r"config.json: not valid JSON"):
        load_checkpoint(broken)
    no_dicts = tmp_path / "nodicts"
    shutil.copytree(src, no_dicts)
    for f in no_dicts.glob("*.pkl"):
        f.unlink()
    with pytest.raises(InputError, match="no token_dictionary"):
        fetch_model("gf", {"kind": "geneformer", "source": "local", "path": str(no_dicts)}, tmp_path / "o")
    assert not (tmp_path / "o").exists()
    no_weights = tmp_path / "noweights"
    shutil.copytree(src, no_weights)
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no weights"):
        load_checkpoint(no_weights)
    garbage = tmp_path / "garbage"
    shutil.copytree(src, garbage)
    (garbage / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(InputError, match="cannot load model weights"):
        load_checkpoint(garbage).load_model()
    with pytest.raises(InputError, match=r"/o: cannot load model weights \(SafetensorError"):
        fetch_model("gf", {"kind": "geneformer", "source": "local", "path": str(garbage)}, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_unknown_model_and_kind():
    with pytest.raises(InputError, match="model 'nope' is not defined under models: \\(defined: geneformer\\)"):
        model_entry({"geneformer": {}}, "nope")
    with pytest.raises(InputError, match="model kind 'bert' is unknown"):
        fetch_model("x", {"kind": "bert", "source": "random"}, "/nonexistent/x")
