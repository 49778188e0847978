"""Loki with a tiny random open_clip CoCa saved in Loki's checkpoint layout: loading, bad checkpoints,
the embed_loki script end to end and its bad inputs (one error line, no output)."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, error_line, run_script

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from tissuelens.errors import InputError  # noqa: E402
from tissuelens.models import loki as lm  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "loki_tiny"
    lm.build_random(out, seed=0)
    (out / lm.MANIFEST).write_text(json.dumps({"kind": "loki", "source": "random", "untrained": True}))
    return out


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory):
    import scanpy as sc

    from tissuelens.datasets.synthetic import make_synthetic

    adata = make_synthetic(n_spots=60, n_genes=70, n_spatial_factors=2, n_groups=3, seed=2, image_size=200)
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    path = tmp_path_factory.mktemp("data") / "preprocessed.h5ad"
    adata.write_h5ad(path)
    return path


def test_checkpoint_layout_and_both_state_dict_forms(model_dir, tmp_path):
    ckpt = lm.load_checkpoint(model_dir)
    assert ckpt.untrained and ckpt.weights.name == "checkpoint.pt" and not ckpt.builtin
    raw = torch.load(model_dir / "checkpoint.pt", weights_only=True)
    assert set(raw) >= {"state_dict", "epoch"} and all(k.startswith("module.") for k in raw["state_dict"])
    plain = tmp_path / "plain"
    lm.build_random(plain, seed=0, training_layout=False)
    m1, preprocess, tok = ckpt.load_model("cpu")
    m2, _, _ = lm.load_checkpoint(plain).load_model("cpu")
    assert type(m1).__name__ == "CoCa"
    for (k1, v1), (k2, v2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    with torch.no_grad():
        t = m1.encode_text(tok(["SYN0001 SYN0002", "CD3E"]), normalize=True)
    assert t.shape == (2, ckpt.embed_dim) and torch.allclose(t.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_gene_tokens_concatenate_to_the_sentence(model_dir):
    from tissuelens.embed.loki.encode import gene_token_lengths

    _, _, tok = lm.load_checkpoint(model_dir).load_model("cpu")
    genes = ["MYH7", "ACTA2", "SYN0001", "CD74"]
    lens = gene_token_lengths(tok, genes)
    ids = tok([" ".join(genes)])[0]
    assert int((ids != 0).sum()) == lens.sum() + 2 and lens.tolist()[0] >= 2  # symbols split into BPE pieces


def test_corrupt_and_non_coca_checkpoints(model_dir, tmp_path):
    bad = tmp_path / "corrupt"
    shutil.copytree(model_dir, bad)
    (bad / "checkpoint.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        lm.load_checkpoint(bad)
    clip = tmp_path / "clip"
    shutil.copytree(model_dir, clip)
    state = torch.load(clip / "checkpoint.pt", weights_only=True)["state_dict"]
    torch.save({k: v for k, v in state.items() if "text_decoder" not in k and "cls_emb" not in k}, clip / "checkpoint.pt")
    with pytest.raises(InputError, match="not a CoCa checkpoint"):
        lm.load_checkpoint(clip)
    cfg = json.loads((clip / "open_clip_config.json").read_text())
    cfg["model_cfg"].pop("multimodal_cfg")
    (clip / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="not a CoCa config"):
        lm.load_checkpoint(clip)
    wider = tmp_path / "wider"
    lm.build_random(wider, seed=0, width=48, heads=2)
    shutil.copy(model_dir / "open_clip_config.json", wider / "open_clip_config.json")
    with pytest.raises(InputError, match="do not fit"):
        lm.load_checkpoint(wider)


def _args(out, h5ad, model, settings):
    return ["--h5ad", h5ad, "--model-dir", model, "--model", "loki_tiny", "--settings", json.dumps({"progress": False, **(settings or {})}),
            "--out", out / "embeddings.h5ad", "--activations", out / "activations", "--metrics", out / "metrics.json"]


def _run(tmp_path, h5ad, model, settings=None, capsys=None):
    """The script in this process (no interpreter start-up), as cli.run runs it: (returncode, stderr)."""
    import importlib.util
    import subprocess

    from tissuelens import cli

    out = tmp_path / "out"
    spec = importlib.util.spec_from_file_location("embed_loki_script", REPO / "workflow" / "scripts" / "embed_loki.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    code = 0
    try:
        cli.run(mod.main, [str(a) for a in _args(out, h5ad, model, settings)])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err if capsys else ""
    return subprocess.CompletedProcess([], code, "", err), out


@pytest.mark.slow  # the rule's script end to end on the tiny CoCa (~20 s of CPU): make test-all
def test_embed_loki_script(tmp_path, preprocessed, model_dir):
    """The real command line, in a fresh interpreter, as the rule runs it."""
    import anndata as ad

    from tissuelens.sae.activations import open_activations

    out = tmp_path / "out"
    proc = run_script("embed_loki", *_args(out, preprocessed, model_dir, {"layers": [0, -1]}))
    assert proc.returncode == 0, proc.stderr
    emb = ad.read_h5ad(out / "embeddings.h5ad")
    for key in ("X_loki_text", "X_loki_image", "X_loki_tiny"):
        assert emb.obsm[key].shape == (60, 16)
        assert np.allclose(np.linalg.norm(emb.obsm[key], axis=1), 1.0, atol=1e-5)
    assert emb.obs["loki_sentence"].str.split().map(len).eq(50).all()
    m = json.loads((out / "metrics.json").read_text())
    assert m["untrained"] is True and m["genes_in_context"]["context_length"] == 76
    assert 0 < m["genes_in_context"]["max"] < 50  # SYNxxxx symbols are 5 BPE tokens: ~14 genes fit
    assert 0 <= m["retrieval"]["accuracy"] <= 1 and m["retrieval"]["neighbours"] == 6
    assert np.isclose(m["text_image_cosine"]["mean"], emb.obs["loki_text_image_cosine"].mean(), atol=1e-6)
    assert "X_loki_image" in m["quality"]
    act = open_activations(out / "activations", -1)
    assert act.meta["layers"] == [0, 1] and act.meta["untrained"] is True and act.meta["kind"] == "loki"
    assert act.array.dtype == np.float16 and act.array.shape[1] == 32
    per_spot = act.index.groupby("cell").size()
    assert (per_spot == emb.obs["loki_genes_in_context"].to_numpy() * 0 + per_spot.iloc[0]).all()  # same length: same genes
    assert set(act.index.gene[act.index.position == 0]) == {"<start_of_text>"}
    assert set(act.index.gene[act.index.position == 76]) == {"<cls>"}
    assert act.index.gene[~act.index.gene.str.startswith("<")].str.startswith("ENSG").all()


def test_embed_loki_embeddings_as_activations(tmp_path, preprocessed, model_dir, capsys):
    proc, out = _run(tmp_path, preprocessed, model_dir, {"activations": "embeddings", "image": False}, capsys)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "activations" / "meta.json").read_text())
    assert meta["n_tokens"] == 60 and meta["d_model"] == 16 and meta["activations"] == "embeddings"


@pytest.mark.parametrize("case, pattern", [
    ("no_image", "no H&E image"),
    ("outside", "spots lie outside"),
    ("ensembl", "not gene symbols"),
    ("corrupt", "cannot read checkpoint"),
])
def test_embed_loki_bad_input(tmp_path, preprocessed, model_dir, case, pattern, capsys):
    import anndata as ad

    adata = ad.read_h5ad(preprocessed)
    settings, model = {"image": True}, model_dir
    if case == "no_image":
        del adata.uns["spatial"]
    elif case == "outside":
        adata.obsm["spatial"][3] = [1e6, 1e6]
    elif case == "ensembl":
        adata.var_names = adata.var["gene_ids"].astype(str).to_numpy()
    elif case == "corrupt":
        model = tmp_path / "corrupt"
        shutil.copytree(model_dir, model)
        with open(model / "checkpoint.pt", "r+b") as fh:
            fh.truncate(1000)
    h5ad = tmp_path / "in.h5ad"
    adata.write_h5ad(h5ad)
    proc, out = _run(tmp_path, h5ad, model, settings, capsys)
    assert proc.returncode == 2
    assert pattern in error_line(proc)
    assert not out.exists() or not any(out.iterdir())


def test_embed_loki_small_and_edge_patches(tmp_path, preprocessed, model_dir, capsys):
    """Patches smaller than the model's ViT patch embed (the transform resizes them); a spot on the image's
    edge is padded and flagged, not skipped."""
    import anndata as ad

    adata = ad.read_h5ad(preprocessed)
    lib = next(iter(adata.uns["spatial"]))
    adata.obsm["spatial"][0] = [0.0, 0.0]  # the image's corner
    h5ad = tmp_path / "edge.h5ad"
    adata.write_h5ad(h5ad)
    proc, out = _run(tmp_path, h5ad, model_dir, {"image": True, "patch_px": 3}, capsys)
    assert proc.returncode == 0, proc.stderr
    image = json.loads((out / "metrics.json").read_text())["image"]
    assert image["patch_px"] == 3 and image["padded_spots"] >= 1 and image["library"] == lib
    emb = ad.read_h5ad(out / "embeddings.h5ad")
    assert bool(emb.obs["loki_patch_padded"].iloc[0]) and np.isfinite(emb.obsm["X_loki_image"]).all()


LOKI_ENV_MODULES = {"numpy", "scipy", "pandas", "anndata", "h5py", "torch", "torchvision", "open_clip", "PIL", "tqdm",
                    "yaml", "pyarrow", "safetensors", "huggingface_hub", "matplotlib", "cv2", "sklearn", "scanpy",
                    "jsonschema", "referencing", "pynndescent", "tangram"}
UNCALLED = {"decoupler"}  # imported lazily by analyze.markers.score, which the Loki code never calls


def _imports(path: Path) -> set:
    tree = ast.parse(path.read_text(), feature_version=(3, 9))  # also: valid Python 3.9 syntax
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}  # `from package import module` reaches the module
    return names


def third_party_imports(script: Path) -> set:
    """Top-level third-party modules imported by `script` and every tissuelens module it reaches (each file
    parsed as Python 3.9)."""
    import sys

    seen, todo, third = set(), [script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            top = name.split(".")[0]
            if top == "tissuelens":
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    base = REPO / "src" / Path(*parts[:i])
                    for cand in (base.with_suffix(".py"), base / "__init__.py"):
                        if cand.is_file():
                            todo.append(cand)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third.add(top)
    return third


def test_loki_script_imports_only_what_the_loki_env_has():
    """Everything embed_loki.py reaches in tissuelens parses as Python 3.9 and imports only workflow/envs/loki.yaml
    packages (scanpy/sklearn/pynndescent appear only behind the ImportError guard of the shared metrics; tangram
    and decoupler only inside the task rules' functions, which share embed.loki.run)."""
    third = third_party_imports(REPO / "workflow" / "scripts" / "embed_loki.py")
    assert third <= LOKI_ENV_MODULES | UNCALLED, third - LOKI_ENV_MODULES
    pins = "\n".join(str(x) for x in __import__("yaml").safe_load((REPO / "workflow" / "envs" / "loki.yaml").read_text())["dependencies"])
    assert "pyarrow" in pins and "python=3.9" in pins
