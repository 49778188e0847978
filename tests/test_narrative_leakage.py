"""The tissue-blind leakage checker, the prompt built from aggregated metrics, and the image letterbox."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from helpers.report_fixtures import write_preprocessed, write_stage_files

from tissuelens.errors import InputError
from tissuelens.report.leakage import assert_tissue_blind, check_prompt
from tissuelens.report.medgemma import letterbox
from tissuelens.report.prompt import build_prompt, sample_id

CLEAN = [
    "Sample sample-qfccobmcqf: spatially resolved gene expression measured on spots of one section.",
    "- Scale: on the order of 10^3 spots; quality filters kept 97.5% of spots and 100% of genes.",
    "- Annotated groups: 4; share of spots: A 32.4%, B 12.3%, C 20.3%, D 34.9%.",
    "- svgp: held-out deviance 1.23e+03; reconstruction error 0.451; Moran's I 0.812, 0.0123.",
    "Task: describe the architecture, compartments and staining patterns of the stained section.",
]
LEAKS = [
    ("Spots from the liver section.", "tissue word", "liver"),
    ("Hepatic zonation is visible.", "tissue word", "Hepatic"),
    ("A cortical layer structure.", "tissue word", "cortical"),
    ("Mouse brain, coronal.", "tissue word", "brain"),
    ("Group A is mostly hepatocytes.", "cell-type name", "hepatocytes"),
    ("Astrocyte-rich region.", "cell-type name", "Astrocyte-rich"),
    ("Enterocytes line the surface.", "cell-type name", "Enterocytes"),
    ("The sample has 12,345 spots.", "raw count", "12,345"),
    ("Median of 1834 counts per spot.", "raw count", "1834"),
    ("Dataset visium_hne, good quality.", "identifier", "visium_hne"),
    ("Top spot spot_00012 is bright.", "identifier", "spot_00012"),
    ("Group domain_2 dominates.", "identifier", "domain_2"),
    ("Factor 1 loads on ALB and APOA1.", "gene symbol", "ALB"),
]
IDS = {"visium_hne", "spot_00012", "domain_2", "demo"}
GENES = {"ALB", "APOA1", "SYN0001"}


@pytest.mark.parametrize("text", CLEAN)
def test_clean_prompts_pass(text):
    assert check_prompt(text, IDS, GENES) == []
    assert_tissue_blind(text, IDS, GENES)


@pytest.mark.parametrize("text, kind, word", LEAKS)
def test_leaky_prompts_fail_naming_the_leak(text, kind, word):
    findings = check_prompt(text, IDS, GENES)
    assert (kind, word) in {(f.kind, f.text) for f in findings}, findings
    with pytest.raises(InputError) as err:
        assert_tissue_blind(text, IDS, GENES, where="narrative prompt")
    message = str(err.value)
    assert message.startswith("narrative prompt: not tissue-blind:") and word in message and "\n" not in message


def test_numbers_that_are_not_counts_pass():
    # decimals, percentages, exponents and scientific notation are aggregated values, not counts
    assert check_prompt("0.1234, 45.6%, 100%, 10^4, 2.50e+03, 99.5, 1234.5") == []
    assert [f.text for f in check_prompt("1,000 and 900 and 25")] == ["1,000", "900"]


def test_genes_are_case_sensitive_and_numeric_ids_ignored():
    assert check_prompt("the alb gene", genes={"ALB"}) == []
    assert check_prompt("10^3 spots", identifiers={"10", "3"}) == []


def test_sample_id_is_a_stable_hash_without_the_name():
    sid = sample_id("liver_merfish", {"source": "local", "path": "/data/liver.h5ad"})
    assert sid == sample_id("liver_merfish", {"source": "local", "path": "/data/liver.h5ad"})
    assert sid != sample_id("other", {"source": "local"})
    assert sid.startswith("sample-") and len(sid) == 17 and "liver" not in sid
    assert check_prompt(sid) == []


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory):
    import anndata as ad

    root = tmp_path_factory.mktemp("narr")
    qc_path, h5ad = write_preprocessed(root)
    adata = ad.read_h5ad(h5ad)
    plan = write_stage_files(root, adata)
    return root, json.loads(qc_path.read_text()), adata, plan


def test_the_narrative_reads_only_the_files_its_job_waits_for(stage_inputs):
    # the narrative job's inputs are narrative_plan's files: the prompt from them alone is the prompt from them all
    from tissuelens.report.stages import narrative_plan, plan_files

    _, qc, adata, plan = stage_inputs
    fewer = narrative_plan(plan)
    assert 0 < len(plan_files(fewer)) < len(plan_files(plan)) and set(plan_files(fewer)) < set(plan_files(plan))
    assert {s: e["status"] for s, e in fewer.items()} == {s: e["status"] for s, e in plan.items()}
    full = build_prompt("demo", {"source": "synthetic"}, qc, adata, plan, picture=None)
    assert build_prompt("demo", {"source": "synthetic"}, qc, adata, fewer, picture=None) == full
    # markers_used.csv adds no line: it names the cell types the prompt must withhold
    for name in ("factors.npy", "summary.json", "features.parquet", "embedding_metrics.json", "markers_used.csv"):
        assert any(Path(f).name == name for f in plan_files(fewer)), name


def test_prompt_from_every_stage_is_tissue_blind(stage_inputs):
    _, qc, adata, plan = stage_inputs
    rec = build_prompt("demo", {"source": "synthetic"}, qc, adata, plan, picture="An image of the stained section is attached")
    text = rec["system"] + rec["prompt"]
    assert rec["withheld"] == []
    assert "Best variant by held-out deviance: svgp" in rec["prompt"]
    assert "Moran's I of each factor of svgp: 0.8, 0.6, 0.3" in rec["prompt"]
    assert "retrieval accuracy 0.31" in rec["prompt"] and "text image cosine mean 0.52" in rec["prompt"]  # Loki's metrics.json
    assert "fraction of variance explained 0.81" in rec["prompt"]
    # the analyze stage's aggregated facts, without the cell-type names (type_domain_1, ...) or domain labels
    assert re.search(r"- Spatial domains \(Leiden on neighbour-smoothed expression\): \d+; share of spots, largest "
                     r"first: (\d+\.\d%, )+\d+\.\d%\.", rec["prompt"])
    assert re.search(r"- Marker-based annotation \(cell-type names withheld\): 3 types called; mean confidence of the call", rec["prompt"])
    assert "Neighbourhood enrichment of the spatial domains: mean z-score with itself" in rec["prompt"]
    assert "spatial domains vs annotated groups" in rec["prompt"] and "Doublets" not in rec["prompt"]
    assert "demo" not in text and "domain_" not in text and "SYN0" not in text and "type_" not in text
    assert not any(n in text for n in ("160", "2000", "2,000"))  # no raw numbers of spots or tokens
    assert check_prompt(text, {"demo", *adata.obs_names}, set(adata.var_names)) == []


def test_leaky_metric_lines_are_withheld(stage_inputs):
    root, qc, adata, plan = stage_inputs
    path = plan["embed"]["units"]["geneformer"]["embedding_metrics.json"]
    original = open(path).read()
    try:
        open(path, "w").write(json.dumps({"silhouette hepatocyte": 0.5, "ari": 0.3}))
        rec = build_prompt("demo", {"source": "synthetic"}, qc, adata, plan, picture=None)
    finally:
        open(path, "w").write(original)
    assert len(rec["withheld"]) == 1 and "cell-type name" in rec["withheld"][0]
    assert "hepatocyte" not in rec["prompt"] and "Embedding geneformer" not in rec["prompt"]
    assert "Embedding loki" in rec["prompt"]


def test_groups_from_domains_are_introduced_as_unsupervised(stage_inputs):
    _, qc, adata, plan = stage_inputs
    labelled = build_prompt("demo", {}, qc, adata, plan, picture=None)["prompt"]
    assert "- Annotated groups: 3 (labels replaced by letters); share of spots: A " in labelled
    unlabelled = build_prompt("demo", {}, {**qc, "group_source": "spatial_domain"}, adata, plan, picture=None)["prompt"]
    assert ("- Groups: 3 unsupervised spatial domains (the sample has no annotation; labels replaced by letters); "
            "share of spots: A ") in unlabelled and "Annotated groups" not in unlabelled


def test_a_cell_type_name_in_an_analyze_line_is_withheld(stage_inputs):
    """Cell-type names of the marker file count as identifiers: a summary naming one loses that line only."""
    root, qc, adata, plan = stage_inputs
    path = plan["analyze"]["files"]["summary.json"]
    original = open(path).read()
    summary = json.loads(original)
    summary["nhood_enrichment"]["key"] = "type_domain_2"
    try:
        open(path, "w").write(json.dumps(summary))
        rec = build_prompt("demo", {"source": "synthetic"}, qc, adata, plan, picture=None)
    finally:
        open(path, "w").write(original)
    assert rec["withheld"] == ["identifier"] and "type_domain_2" not in rec["prompt"]
    assert "Neighbourhood enrichment" not in rec["prompt"] and "Marker-based annotation" in rec["prompt"]


@pytest.mark.parametrize("shape", [(30, 60, 3), (60, 30, 3), (40, 40)])
def test_letterbox_keeps_aspect_and_pads_white(shape):
    img = np.zeros(shape, dtype=np.float32)  # black image in [0, 1]
    out = np.asarray(letterbox(img, 64))
    assert out.shape == (64, 64, 3)
    h, w = shape[:2]
    scale = 64 / max(h, w)
    black = (out.sum(axis=-1) == 0)
    rows, cols = np.where(black)
    assert rows.max() - rows.min() + 1 == round(h * scale) and cols.max() - cols.min() + 1 == round(w * scale)
    assert (out[0, 0] == 255).all() if h != w else black.all()
