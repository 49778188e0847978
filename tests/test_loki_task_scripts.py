"""The Loki task rules' scripts (loki_annotate, loki_retrieve, loki_predex) on a tiny untrained CoCa's
embeddings of a small synthetic dataset: outputs, and bad input as one error line with no output."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, error_line, run_script

pytest.importorskip("open_clip")
from tissuelens.models import loki as lm  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import scanpy as sc

    from tissuelens.datasets.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("loki_tasks")
    model = root / "loki_tiny"
    lm.build_random(model, seed=0)
    (model / lm.MANIFEST).write_text(json.dumps({"kind": "loki", "source": "random", "untrained": True}))
    adata = make_synthetic(n_spots=60, n_genes=70, n_spatial_factors=2, n_groups=3, seed=2, image_size=200)
    adata.layers["counts"] = adata.X.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.var["highly_variable"] = True
    pre = root / "preprocessed.h5ad"
    adata.write_h5ad(pre)
    emb = root / "embed"
    run_script("embed_loki", "--h5ad", pre, "--model-dir", model, "--model", "loki_tiny", "--settings",
               json.dumps({"progress": False, "activations": "embeddings"}), "--out", emb / "embeddings.h5ad",
               "--activations", emb / "activations", "--metrics", emb / "metrics.json", check=True)
    markers = root / "markers.csv"
    genes = list(adata.var_names)
    markers.write_text("gene,cell_type\n" + "".join(f"{g},type_{i % 3}\n" for i, g in enumerate(genes[:12])) + "NOTAGENE,type_9\n")
    return {"root": root, "model": model, "pre": pre, "emb": emb / "embeddings.h5ad", "markers": markers, "adata": adata}


def test_annotate_writes_best_type_similarity_entropy(built, tmp_path):
    out, summary = tmp_path / "annotation.parquet", tmp_path / "annotation.json"
    settings = {"markers": str(built["markers"]), "format": "csv", "top_n": 50, "min_markers": 1}
    run_script("loki_annotate", "--embeddings", built["emb"], "--preprocessed", built["pre"], "--model-dir", built["model"],
               "--settings", json.dumps(settings), "--out", out, "--summary", summary, check=True)
    t = pd.read_parquet(out)
    s = json.loads(summary.read_text())
    assert s["cell_types"] == ["type_0", "type_1", "type_2"]  # type_9's only gene is not in the data
    assert s["sentences"]["type_0"].split() == [built["adata"].var_names[i] for i in (0, 3, 6, 9)]
    assert len(t) == 60 and {"image_cell_type", "image_similarity", "image_entropy", "text_cell_type"} <= set(t)
    cos = t[[f"image_cos:{c}" for c in s["cell_types"]]].to_numpy()
    np.testing.assert_allclose(t["image_similarity"], cos.max(axis=1))
    assert ((t["image_entropy"] >= 0) & (t["image_entropy"] <= 1)).all() and s["untrained"] is True


@pytest.mark.parametrize("case,pattern", [
    ("missing", "marker file not found"),
    ("no_gene", "no marker gene of the file is in the data"),
])
def test_annotate_bad_markers(built, tmp_path, case, pattern):
    markers = tmp_path / "m.csv"
    if case == "no_gene":
        markers.write_text("gene,cell_type\nNOTAGENE,t\n")
    out = tmp_path / "annotation.parquet"
    proc = run_script("loki_annotate", "--embeddings", built["emb"], "--preprocessed", built["pre"], "--model-dir", built["model"],
                      "--settings", json.dumps({"markers": str(markers), "format": "csv", "top_n": 5}), "--out", out,
                      "--summary", tmp_path / "a.json")
    assert proc.returncode == 2 and pattern in error_line(proc)
    assert not out.exists() and not (tmp_path / "a.json").exists()


def test_retrieve_within_the_dataset_and_k_too_large(built, tmp_path):
    out, summary = tmp_path / "retrieval.parquet", tmp_path / "retrieval.json"
    run_script("loki_retrieve", "--embeddings", built["emb"], "--settings", json.dumps({"k": 4, "enabled": "auto"}),
               "--out", out, "--summary", summary, check=True)
    t = pd.read_parquet(out)
    s = json.loads(summary.read_text())
    assert len(t) == 60 * 4 and t.groupby("spot")["rank"].apply(list).map(lambda r: r == [1, 2, 3, 4]).all()
    assert 0 <= s["self_at_k"] <= 1 and s["self_chance"] == pytest.approx(4 / 60) and "label_precision_at_k" in s
    assert t.groupby("spot")["similarity"].apply(lambda v: bool(np.all(np.diff(v.to_numpy()) <= 0))).all()
    bad = run_script("loki_retrieve", "--embeddings", built["emb"], "--settings", json.dumps({"k": 61}),
                     "--out", tmp_path / "r2.parquet", "--summary", tmp_path / "r2.json")
    assert bad.returncode == 2 and "k=61 but there are 60 spots" in error_line(bad)
    assert not (tmp_path / "r2.parquet").exists()


def test_retrieve_against_a_reference_without_labels_fails(built, tmp_path):
    ref = ad.read_h5ad(built["emb"])
    del ref.obs["group"]
    ref.write_h5ad(tmp_path / "ref.h5ad")
    proc = run_script("loki_retrieve", "--embeddings", built["emb"], "--reference", tmp_path / "ref.h5ad", "--reference-name", "sc",
                      "--settings", json.dumps({"k": 3}), "--out", tmp_path / "r.parquet", "--summary", tmp_path / "r.json")
    assert proc.returncode == 2 and "reference dataset 'sc' has no labels" in error_line(proc)


def test_predex_scores_held_out_spots(built, tmp_path):
    files = {"--genes-out": tmp_path / "predex_genes.csv", "--spots-out": tmp_path / "predex_spots.parquet",
             "--summary": tmp_path / "predex.json"}
    settings = {"test_fraction": 0.25, "top_k": 10, "temperature": 0.1, "genes": "highly_variable", "report_genes": 3,
                "split": "random"}
    args = [a for kv in files.items() for a in kv]
    run_script("loki_predex", "--embeddings", built["emb"], "--preprocessed", built["pre"], "--settings", json.dumps(settings),
               "--seed", 0, *args, check=True)
    genes = pd.read_csv(files["--genes-out"])
    s = json.loads(files["--summary"].read_text())
    assert s["n_test"] == 15 and s["n_train"] == 45 and len(genes) == 70
    assert genes["pearson"].dropna().between(-1, 1).all() and s["best_genes"] == genes["gene"].head(3).tolist()
    spots = pd.read_parquet(files["--spots-out"])
    assert len(spots) == 15 * 3 and {"measured", "predicted", "x", "y"} <= set(spots)
    again = tmp_path / "again.json"
    run_script("loki_predex", "--embeddings", built["emb"], "--preprocessed", built["pre"], "--settings", json.dumps(settings),
               "--seed", 0, "--genes-out", tmp_path / "g2.csv", "--spots-out", tmp_path / "s2.parquet", "--summary", again, check=True)
    assert json.loads(again.read_text()) == s  # same seed, same numbers


def test_image_tasks_without_an_image(built, tmp_path):
    emb = ad.read_h5ad(built["emb"])
    del emb.obsm["X_loki_image"]
    path = tmp_path / "noimage.h5ad"
    emb.write_h5ad(path)
    proc = run_script("loki_retrieve", "--embeddings", path, "--settings", json.dumps({"k": 3, "enabled": True}),
                      "--out", tmp_path / "r.parquet", "--summary", tmp_path / "r.json")
    assert proc.returncode == 2 and "no image embeddings" in error_line(proc) and not (tmp_path / "r.parquet").exists()
    run_script("loki_retrieve", "--embeddings", path, "--settings", json.dumps({"k": 3, "enabled": "auto"}),
               "--out", tmp_path / "r.parquet", "--summary", tmp_path / "r.json", check=True)
    assert json.loads((tmp_path / "r.json").read_text()) == {"skipped": "no H&E image embeddings"}


def test_task_scripts_import_only_what_the_loki_env_has():
    from test_loki_model import LOKI_ENV_MODULES, UNCALLED, third_party_imports  # the embed script's check, reused

    for script in ("loki_annotate", "loki_retrieve", "loki_predex", "loki_decompose"):
        third = third_party_imports(REPO / "workflow" / "scripts" / f"{script}.py")
        assert third <= LOKI_ENV_MODULES | UNCALLED, (script, third - LOKI_ENV_MODULES)


def test_workflow_plans_every_loki_task_and_refuses_an_unknown_reference(tmp_path):
    """The demo config plans the four Loki task jobs; a reference that is not a dataset of the config stops
    the dry run with one line naming the key."""
    import yaml
    from helpers.configs import write_config
    from helpers.workflow import plan, snakemake

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    write_config(tmp_path, config)
    jobs = {rule for rule, _ in plan(tmp_path, "results/demo/loki/loki_tiny/decompose.json",
                                     "results/demo/loki/loki_tiny/predex.json", "results/demo/loki/loki_tiny/retrieval.json",
                                     "results/demo/loki/loki_tiny/annotation.json")}
    assert {"loki_annotate", "loki_retrieve", "loki_predex", "loki_decompose", "embed_loki"} <= jobs
    for task in ("retrieve", "decompose"):
        bad = yaml.safe_load(yaml.safe_dump(config))
        bad["embed"]["loki"][task] = {"reference": "nope"}
        write_config(tmp_path, bad)
        proc = snakemake(tmp_path, "-n", check=False)
        assert proc.returncode != 0
        assert f"datasets.demo: embed.loki.{task}.reference names 'nope', which is not a dataset of this config" in proc.stdout
    bad = yaml.safe_load(yaml.safe_dump(config))
    bad["embed"]["loki"]["predex"] = {"reference": ["demo"]}  # a slide cannot be its own training slide
    write_config(tmp_path, bad)
    proc = snakemake(tmp_path, "-n", check=False)
    assert proc.returncode != 0
    assert "datasets.demo: embed.loki.predex.reference names 'demo', which is not another dataset of this config" in proc.stdout


@pytest.mark.slow  # Tangram twice and three bad runs (~25 s of CPU): make test-all
def test_decompose_script_twice_at_seed_0_gives_identical_files_and_bad_fractions_fail(built, tmp_path):
    """The rule's command, run twice at seed 0 (tangram-sc seeds itself only for a non-zero random_state):
    identical tables; fractions that miss a reference type stop it with one line and no output."""
    pytest.importorskip("tangram")
    settings = {"label_key": "group", "spot_embedding": "auto", "num_epochs": 30, "device": "cpu", "nms_mode": True}
    runs = []
    for i in range(2):
        out = tmp_path / f"d{i}.parquet"
        run_script("loki_decompose", "--embeddings", built["emb"], "--reference", built["emb"], "--reference-name", "self",
                   "--settings", json.dumps(settings), "--seed", 0, "--out", out, "--summary", tmp_path / f"d{i}.json", check=True)
        runs.append(pd.read_parquet(out))
    pd.testing.assert_frame_equal(runs[0], runs[1], check_exact=True)
    s = json.loads((tmp_path / "d0.json").read_text())
    t = pd.read_parquet(tmp_path / "d0.parquet")
    types = s["cell_types"]
    assert sum(s["reference_counts"].values()) == 60 and s["weights"] == "reference"
    assert {f"mapping:{c}" for c in types} | {f"nms:{c}" for c in types} <= set(t)
    np.testing.assert_allclose(t[types].sum(axis=1), 1.0, atol=1e-9)
    bad = {**settings, "weights": "fractions", "fractions": {types[0]: 1.0}}
    proc = run_script("loki_decompose", "--embeddings", built["emb"], "--reference", built["emb"], "--reference-name", "self",
                      "--settings", json.dumps(bad), "--seed", 0, "--out", tmp_path / "bad.parquet", "--summary", tmp_path / "bad.json")
    assert proc.returncode == 2 and "embed.loki.decompose.fractions: no fraction for" in error_line(proc)
    assert len([x for x in proc.stderr.splitlines() if x.startswith("error")]) == 1
    assert not (tmp_path / "bad.parquet").exists() and not (tmp_path / "bad.json").exists()


def test_predex_script_across_slides(built, tmp_path):
    """--reference NAME EMB PRE: every spot predicted from the other slide (here a copy of the same slide),
    the within-slide block score beside it; a reference whose two files list different spots fails."""
    settings = {"test_fraction": 0.25, "top_k": 5, "temperature": 0.1, "genes": "highly_variable", "report_genes": 3}
    files = ["--genes-out", tmp_path / "g.csv", "--spots-out", tmp_path / "s.parquet", "--summary", tmp_path / "p.json"]
    run_script("loki_predex", "--embeddings", built["emb"], "--preprocessed", built["pre"], "--reference", "twin", built["emb"],
               built["pre"], "--settings", json.dumps(settings), "--seed", 0, *files, check=True)
    s = json.loads((tmp_path / "p.json").read_text())
    assert s["evaluation"] == "cross_slide" and s["reference"] == ["twin"] and s["n_test"] == 60 and s["n_train"] == 60
    assert s["within_slide"]["split"] == "blocks" and 0 < s["within_slide"]["n_test"] < 60
    genes = pd.read_csv(tmp_path / "g.csv")
    assert {"pearson", "pearson_within_slide"} <= set(genes) and len(genes) == 70
    part = ad.read_h5ad(built["pre"])[:30].copy()
    part.write_h5ad(tmp_path / "part.h5ad")
    bad = [a if not isinstance(a, type(tmp_path)) else a.with_name("bad_" + a.name) for a in files]
    proc = run_script("loki_predex", "--embeddings", built["emb"], "--preprocessed", built["pre"], "--reference", "twin",
                      built["emb"], tmp_path / "part.h5ad", "--settings", json.dumps(settings), *bad)
    assert proc.returncode == 2 and "reference dataset 'twin': embeddings.h5ad and preprocessed.h5ad list different spots" in error_line(proc)
    assert not any(p.exists() for p in bad if not isinstance(p, str))


def test_annotate_with_curated_sentences_reports_the_context_cut(built, tmp_path):
    """A sentence file is encoded as written (genes absent from the data kept, file order); a sentence longer
    than the 76-token context is reported with the genes that are cut; markers are not needed."""
    genes = list(built["adata"].var_names)
    long = " ".join(genes[:60])
    path = tmp_path / "sentences.csv"
    path.write_text(f"cell_type,sentence\nT cell,CD3D  CD3E CD2\nstroma,{long}\n")
    out, summary = tmp_path / "a.parquet", tmp_path / "a.json"
    proc = run_script("loki_annotate", "--embeddings", built["emb"], "--preprocessed", built["pre"], "--model-dir", built["model"],
                      "--settings", json.dumps({"sentences": str(path), "markers": None}), "--out", out, "--summary", summary, check=True)
    s = json.loads(summary.read_text())
    assert s["cell_types"] == ["T cell", "stroma"] and s["sentences"]["T cell"] == "CD3D CD3E CD2"  # verbatim, not in the data
    assert s["context"]["T cell"] == {"genes": ["CD3D", "CD3E", "CD2"], "genes_in_context": 3, "cut": []}
    cut = s["context"]["stroma"]
    assert 0 < cut["genes_in_context"] < 60 and cut["genes"] == genes[:60] and cut["cut"] == genes[cut["genes_in_context"]:60]
    assert "only the first" in proc.stderr and "markers" not in s and s["sentences_file"] == str(path)
    t = pd.read_parquet(out)
    assert set(t["image_cell_type"]) <= {"T cell", "stroma"} and {"image_cos:T cell", "image_cos:stroma"} <= set(t)


@pytest.mark.parametrize("text, pattern", [
    ("cell_type,genes\nT,CD3D\n", "no column sentence"),
    ("cell_type,sentence\nT,CD3D\nT,CD2\n", "cell type listed twice: T"),
    ("cell_type,sentence\nT,\n", "every row needs a cell type and a non-empty sentence"),
])
def test_annotate_bad_sentence_file(built, tmp_path, text, pattern):
    path = tmp_path / "s.csv"
    path.write_text(text)
    out = tmp_path / "a.parquet"
    proc = run_script("loki_annotate", "--embeddings", built["emb"], "--preprocessed", built["pre"], "--model-dir", built["model"],
                      "--settings", json.dumps({"sentences": str(path)}), "--out", out, "--summary", tmp_path / "a.json")
    assert proc.returncode == 2 and pattern in error_line(proc) and not out.exists()


def test_workflow_plans_annotation_from_a_sentence_file_alone(tmp_path):
    import yaml
    from helpers.configs import write_config
    from helpers.workflow import plan

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    (tmp_path / "sentences.csv").write_text("cell_type,sentence\nT,CD3D CD3E\n")
    config["embed"]["loki"]["annotate"] = {"markers": None, "sentences": "sentences.csv"}
    write_config(tmp_path, config)
    jobs = {rule for rule, _ in plan(tmp_path, "results/demo/loki/loki_tiny/annotation.json")}
    assert "loki_annotate" in jobs


def test_annotate_from_bulk_samples_alone(built, tmp_path):
    """A bulk table (genes x samples): each sample's top-gene sentence scored against every spot's image."""
    adata = built["adata"]
    genes = list(adata.var_names)
    bulk = pd.DataFrame({"tumour": np.arange(len(genes), dtype=float), "normal": np.arange(len(genes), dtype=float)[::-1]},
                        index=pd.Index(genes, name="gene"))
    bulk.to_csv(tmp_path / "bulk.csv")
    out, summary = tmp_path / "a.parquet", tmp_path / "a.json"
    run_script("loki_annotate", "--embeddings", built["emb"], "--preprocessed", built["pre"], "--model-dir", built["model"],
               "--settings", json.dumps({"bulk": str(tmp_path / "bulk.csv")}), "--out", out, "--summary", summary, check=True)
    s = json.loads(summary.read_text())
    t = pd.read_parquet(out)
    assert s["cell_types"] == [] and set(s["bulk"]) == {"tumour", "normal"}
    usable = [g for g in genes if "-" not in g and "." not in g]  # Loki's generate_gene_df drops these symbols
    assert s["bulk"]["tumour"]["sentence"].split()[:3] == usable[::-1][:3]  # highest expression first
    assert s["bulk"]["normal"]["sentence"].split()[:3] == usable[:3]
    for c in ("bulk:tumour", "bulk:normal"):
        assert t[c].min() == 0.0 and t[c].max() == 1.0
    (tmp_path / "bad.csv").write_text("gene,s1\nA,x\n")
    proc = run_script("loki_annotate", "--embeddings", built["emb"], "--preprocessed", built["pre"], "--model-dir", built["model"],
                      "--settings", json.dumps({"bulk": str(tmp_path / "bad.csv")}), "--out", tmp_path / "b.parquet",
                      "--summary", tmp_path / "b.json")
    assert proc.returncode == 2 and "sample columns must be numeric" in error_line(proc) and not (tmp_path / "b.parquet").exists()
