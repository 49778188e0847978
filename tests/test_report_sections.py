"""The report from every stage's files: sections, figures, stage plan, and corrupt-input errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import error_line, run_script
from helpers.report_fixtures import report_defaults, stage_config, write_preprocessed, write_stage_files

from tissuelens.errors import InputError
from tissuelens.report.build import build_report
from tissuelens.report.stages import plan_files, stage_plan

SECTION_IDS = ["dataset", "analyze", "factorize", "embed", "sae", "narrative", "provenance"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A report over every stage (fake stage files in the stages' formats) and a narrative."""
    import anndata as ad

    from tissuelens.io import write_json
    from tissuelens.report.prompt import make_narrative

    root = tmp_path_factory.mktemp("report")
    qc, h5ad = write_preprocessed(root)
    adata = ad.read_h5ad(h5ad)
    plan = write_stage_files(root, adata)
    narrative = root / "results/demo/report/narrative.json"
    settings = report_defaults()
    write_json(make_narrative("demo", {"source": "synthetic"}, json.loads(qc.read_text()), adata, plan,
                              {**settings["narrative"], "image_size": 64}), narrative)
    out = root / "results/demo/report/index.html"
    run_config = {"dataset": "demo", "seed": 0, "entry": {"source": "synthetic", "group_key": "group"},
                  "steps": {"report": settings}}
    build_report("demo", qc, h5ad, plan, settings, run_config, out, root / "results/demo/report/figures", narrative)
    return {"root": root, "qc": qc, "h5ad": h5ad, "plan": plan, "narrative": narrative, "html": out.read_text(),
            "out": out, "settings": settings}


def sections(html: str) -> dict:
    found = re.findall(r'<section id="([a-z]+)" class="report-section" data-status="([a-z]+)">(.*?)</section>', html, re.S)
    return {sid: (status, body) for sid, status, body in found}


def test_every_section_present_with_content(built):
    secs = sections(built["html"])
    assert list(secs) == SECTION_IDS
    assert all(status == "ok" for status, _ in secs.values())
    for sid, (_, body) in secs.items():
        assert len(re.sub(r"<[^>]+>", "", body).strip()) > 50, sid


def test_figures_are_embedded_and_saved_for_snakemake_report(built):
    html = built["html"]
    imgs = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) >= 12
    import base64

    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in imgs)
    saved = sorted(p.relative_to(built["root"] / "results/demo/report/figures").as_posix()
                   for p in (built["root"] / "results/demo/report/figures").rglob("*.png"))
    assert len(saved) == len(imgs)
    assert {"dataset/tissue.png", "factorize/elbo.png", "factorize/factors-svgp.png", "embed/umap-loki-x-loki-text.png",
            "embed/umap-loki-x-loki-image.png", "embed/loki-cosine-loki.png", "embed/loki-annotation-loki.png",
            "embed/loki-predex-loki.png", "embed/loki-decompose-loki.png",
            "sae/loss-curve-geneformer.png", "narrative/model-input.png", "analyze/domains.png", "analyze/cell-types.png",
            "analyze/marker-dotplot.png", "analyze/nhood-enrichment.png", "analyze/agreement.png"} <= set(saved)
    assert "http://" not in html and "https://" not in html  # nothing fetched: opens offline


def test_section_contents(built):
    secs = sections(built["html"])
    fact = secs["factorize"][1]
    assert '<tr class="best"><td>svgp</td>' in fact and "Best model: <b>svgp</b>" in fact
    assert "held-out deviance" in fact and "Moran&#x27;s I (mean)" in fact
    emb = secs["embed"][1]
    assert "Text-image agreement (Loki)" in emb and "text-image cosine mean" in emb  # from the Loki rule's metrics.json
    assert "Image embeddings (loki)" in emb and "padded edge spots" in emb
    assert "Zero-shot annotation from marker sentences (loki)" in emb and "type_a" in emb
    assert "Image to transcriptome retrieval (loki)" in emb and "self_at_k" in emb
    assert "PredEx (loki)" in emb and "held-out spots predicted from" in emb
    assert "Cell-type decomposition: Tangram (loki)" in emb and "mean proportion" in emb
    assert "untrained (random test) weights" in emb
    sae = secs["sae"][1]
    assert "Most interpretable features" in sae and 'href="../sae/geneformer/dashboard.html"' in sae
    assert "60 of 64 live" in sae
    narr = secs["narrative"][1]
    assert "ready to paste" in narr and "Sample sample-" in narr
    ana = secs["analyze"][1]
    assert "Cell groups are the dataset&#x27;s own labels (group_key &#x27;group&#x27;)." in ana
    assert re.search(r"<h3>Spatial domains: \d+</h3>", ana) and re.search(r"<h3>Expression clusters \(Leiden\): \d+</h3>", ana)
    assert "type_domain_1" in ana and "majority cell type" in ana  # the report names the cell types
    record = json.loads(Path(built["plan"]["analyze"]["files"]["domains.json"]).read_text())
    n = record["n_domains"]
    assert record["chosen_by"] == "stability" and f"<h3>Spatial domains: {n}</h3>" in ana  # the record matches the table
    assert f"<p>{n} spatial domains, chosen as the most stable K of 2-10 (mean pairwise ARI of seeded fits per K: 2: " in ana
    for text in ("Marker-based annotation", "Neighbourhood enrichment", "Spatially variable genes", "Cross-stage agreement",
                 "factors_svgp"):
        assert text in ana, text
    assert "Doublets" not in ana  # spatial data: no doublet detection
    prov = secs["provenance"][1]
    assert "untrained (random test) weights" in prov and "resources/models/geneformer" in prov
    assert "scanpy" in prov and "max_points: 50000" in prov


def test_stage_plan_statuses():
    config = stage_config()
    config["datasets"]["flat"] = {"source": "synthetic", "spatial": False}
    config["datasets"]["flat"]["embed"] = {"models": []}
    plan = stage_plan(config, "demo", lambda p: "/factorize/" in p)
    assert plan["factorize"]["status"] == "built" and list(plan["factorize"]["units"]) == ["pnmf", "svgp"]
    assert plan["embed"]["status"] == "absent" and "no rule" in plan["embed"]["reason"]
    flat = stage_plan(config, "flat", lambda p: True)
    assert list(flat["factorize"]["units"]) == ["pnmf"]  # not spatial: pnmf only
    assert flat["embed"]["status"] == "disabled" and flat["sae"]["status"] == "disabled"
    assert "results/flat/factorize/pnmf/factors.npy" in plan_files(flat)


def test_missing_stages_are_sections_that_say_so(built, tmp_path):
    plan = stage_plan(stage_config(), "demo", lambda p: False)
    out = tmp_path / "index.html"
    build_report("demo", built["qc"], built["h5ad"], plan, built["settings"], {}, out)
    secs = sections(out.read_text())
    assert list(secs) == SECTION_IDS
    for sid in ("analyze", "factorize", "embed", "sae"):
        assert secs[sid][0] == "skipped" and "has not been built" in secs[sid][1]
    assert secs["narrative"][0] == "skipped" and "turned off" in secs["narrative"][1]


def corrupt(path):
    with open(path, "wb") as fh:
        fh.write(b"\x00garbage{")


@pytest.mark.parametrize("stage, unit, name, problem", [
    ("factorize", "svgp", "metrics.json", "not valid JSON"),
    ("factorize", "svgp", "factors.npy", "corrupt .npy"),
    ("factorize", "pnmf", "elbo.csv", "corrupt CSV"),
    ("embed", "loki", "embeddings.h5ad", "not a readable .h5ad"),
    ("sae", "geneformer", "features.parquet", "corrupt parquet"),
    ("analyze", None, "domains.parquet", "corrupt parquet"),
    ("analyze", None, "domains.json", "not valid JSON"),
    ("analyze", None, "agreement.csv", "expected columns a, b, ari, nmi"),
])
def test_corrupt_stage_file_is_one_clear_error(built, tmp_path, stage, unit, name, problem):
    import shutil

    plan = json.loads(json.dumps(built["plan"]))
    files = plan[stage]["units"][unit] if unit else plan[stage]["files"]  # analyze: files per stage
    bad = tmp_path / name
    shutil.copy(files[name], bad)
    corrupt(bad)
    files[name] = str(bad)
    for other in set(plan) - {stage}:  # only the stage under test (keeps the test short)
        plan[other] = {"status": "disabled", "reason": "test", "units": {}, "files": {}}
    with pytest.raises(InputError, match=rf"^{re.escape(str(bad))}: {problem}"):
        build_report("demo", built["qc"], built["h5ad"], plan, built["settings"], {}, tmp_path / "index.html")
    assert not (tmp_path / "index.html").exists()


def test_script_error_line_and_no_output(built, tmp_path):
    bad = tmp_path / "narrative.json"
    bad.write_text(json.dumps({"mode": "prompt"}))
    out, figs = tmp_path / "report/index.html", tmp_path / "report/figures"
    proc = run_script("report", "--dataset", "demo", "--qc", built["qc"], "--preprocessed", built["h5ad"],
                      "--plan", "{}", "--narrative", bad, "--out", out, "--figures", figs)
    assert proc.returncode == 2
    assert error_line(proc) == f"error: {bad}: not a narrative file (missing system, prompt)"
    assert not out.exists() and not figs.exists()


def test_factors_not_matching_cells_are_a_note(built, tmp_path):
    plan = json.loads(json.dumps(built["plan"]))
    short = tmp_path / "factors.npy"
    np.save(short, np.ones((7, 3)))
    plan["factorize"]["units"]["svgp"]["factors.npy"] = str(short)
    out = tmp_path / "index.html"
    build_report("demo", built["qc"], built["h5ad"], plan, built["settings"], {}, out)
    assert "cover 7 cells but the dataset has 160" in out.read_text()


@pytest.mark.parametrize("remove", [False, True])
def test_single_cell_report_shows_the_doublet_rate(tmp_path, remove):
    """Non-spatial data (planted doublets): no maps, the annotation-free section states where groups come from,
    and Scrublet's doublet rate is shown (kept, or removed by preprocess.remove_doublets), also in the prompt."""
    from test_doublets import planted_doublets

    from tissuelens.analyze.domains import compute_domains
    from tissuelens.analyze.run import analyze
    from tissuelens.config import step_defaults
    from tissuelens.io import write_h5ad, write_json
    from tissuelens.preprocess import preprocess
    from tissuelens.report.prompt import build_prompt

    raw, _ = planted_doublets()
    settings = {**step_defaults("preprocess"), "remove_doublets": remove}
    adata, qc = preprocess(raw, {"spatial": False}, settings, "planted.h5ad", doublet_rate=0.05, seed=0)
    qc["group_source"] = None
    base = tmp_path / "results/cells"
    (base / "analyze").mkdir(parents=True)
    write_h5ad(adata, base / "preprocessed.h5ad")
    write_json(qc, base / "qc.json")
    analyze_settings = step_defaults("analyze")
    domains, record = compute_domains(adata.copy(), analyze_settings["domains"], False, 0, "cells")
    res = analyze(adata.copy(), domains, analyze_settings, spatial=False, seed=0, where="cells")
    files = {"domains.parquet": base / "analyze/domains.parquet", "doublets.parquet": base / "analyze/doublets.parquet",
             "summary.json": base / "analyze/summary.json", "domains.json": base / "analyze/domains.json"}
    domains.to_parquet(files["domains.parquet"])
    write_json(record, files["domains.json"])
    res["doublets"].to_parquet(files["doublets.parquet"])
    write_json(res["summary"], files["summary.json"])
    plan = {stage: {"status": "disabled", "reason": "test", "units": {}, "files": {}} for stage in ("factorize", "embed", "sae")}
    plan["analyze"] = {"status": "built", "reason": "", "units": {}, "files": {k: str(v) for k, v in files.items()}}
    out = tmp_path / "index.html"
    build_report("cells", base / "qc.json", base / "preprocessed.h5ad", plan, report_defaults(), {"entry": {}}, out,
                 tmp_path / "figures")
    body = sections(out.read_text())["analyze"][1]
    assert "The dataset has no cell groups" in body and "Not a spatial dataset" in body
    assert re.search(r"<h3>Expression clusters \(Leiden\): \d+</h3>", body) and "Spatial domains:" not in body
    assert record["spatial"] is False and "spatial domains," not in body  # no choice of a number to state
    assert "No marker-based annotation" in body and (tmp_path / "figures/analyze/doublets.png").is_file()
    rate = qc["doublets"]["rate"] if remove else res["summary"]["doublets"]["rate"]
    n_called = qc["doublets"]["n_called"] if remove else res["summary"]["doublets"]["n_called"]
    assert n_called > 0
    assert f"Scrublet called <b>{n_called:,}</b> of {raw.n_obs:,} cells doublets (doublet rate <b>{100 * rate:.2f}%</b>)" in body
    assert ("preprocess removed them" in body) == remove and ("they are kept" in body) == (not remove)
    qc_table = sections(out.read_text())["dataset"][1]
    assert (f"<td>Scrublet doublets (remove_doublets)</td><td>{n_called:,}</td>" in qc_table) == remove
    prompt = build_prompt("cells", {}, qc, adata, plan, picture=None)["prompt"]
    assert f"- Doublets (Scrublet): rate {100 * rate:.2f}% of cells, {'removed before analysis' if remove else 'kept'}." in prompt


def test_script_passes_every_planned_stage_to_the_report(built, tmp_path):
    """workflow/scripts/report.py keeps the analyze stage of the plan (files per stage, no units); a run from
    before domains.json existed still builds, without the sentence on the number of domains."""
    plan = json.loads(json.dumps(built["plan"]))
    for stage in ("factorize", "embed", "sae"):  # keeps the test short
        plan[stage] = {"status": "disabled", "reason": "test", "units": {}, "files": {}}
    del plan["analyze"]["files"]["domains.json"]
    out = tmp_path / "index.html"
    proc = run_script("report", "--dataset", "demo", "--qc", built["qc"], "--preprocessed", built["h5ad"],
                      "--plan", json.dumps(plan), "--out", out)
    assert proc.returncode == 0, proc.stderr
    status, body = sections(out.read_text())["analyze"]
    assert status == "ok" and "Cross-stage agreement" in body
    assert re.search(r"<h3>Spatial domains: \d+</h3>", body) and "chosen as the most stable" not in body
