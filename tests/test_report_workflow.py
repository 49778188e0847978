"""The demo's report end to end: snakemake builds it, `--report` packs its figures, Chromium renders it.

The browser check renders the page headless, marks images that failed to load and sections without
content (an inline script on a copy of the page), and keeps a screenshot under test-artifacts/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import REPO
from helpers.workflow import snakemake

pytestmark = pytest.mark.workflow
ARTIFACTS = REPO / "test-artifacts"
SECTION_IDS = ["dataset", "analyze", "factorize", "embed", "sae", "narrative", "provenance"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]
CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; }).map(function (i) { return i.alt; });
  var empty = Array.prototype.slice.call(document.querySelectorAll('section')).filter(function (s) {
    var h = s.querySelector('h2'); var all = s.innerText || '';
    return all.replace(h ? h.innerText : '', '').trim().length === 0 || (s.offsetHeight || 0) === 0;
  }).map(function (s) { return s.id; });
  document.body.setAttribute('data-check', JSON.stringify({images: imgs.length, broken: broken, empty: empty,
    sections: Array.prototype.map.call(document.querySelectorAll('section'), function (s) { return s.id; })}));
});
</script>"""


def chromium() -> str:
    """Debian's chromium; installed with apt-get when missing and we are root (CI: fresh Debian 12)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"], check=True,
                       capture_output=True, env=env, timeout=900)
        found = shutil.which("chromium")
    if not found:
        pytest.fail("chromium is not installed and could not be installed (apt-get install chromium as root)")
    return found


def browser_check(html: Path, profile: Path, screenshot: Path) -> dict:
    """Render `html` headless: the check script's verdict on a copy, and a screenshot of the page itself."""
    exe = chromium()
    probe = html.with_name(f".probe-{html.name}")
    probe.write_text(html.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    try:
        dom = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}/a", "--virtual-time-budget=10000",
                              "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    m = re.search(r"data-check=\"([^\"]*)\"", dom.stdout)
    assert m, f"chromium produced no check result:\n{dom.stderr[-2000:]}"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    shot = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}/b", "--window-size=1280,6000",
                           f"--screenshot={screenshot}", html.as_uri()], capture_output=True, text=True, timeout=120)
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
    import html as htmllib

    return json.loads(htmllib.unescape(m.group(1)))


@pytest.fixture(scope="module")
def demo(small_demo):
    """The small demo (helpers.configs.demo_config()) built to its end target (`snakemake` with no target =
    every dataset's report): conftest's `small_demo`, the fast tier's one workflow run."""
    return small_demo


@pytest.mark.smoke
def test_demo_report_is_the_end_target_and_complete(demo):
    html = (demo / "results/demo/report/index.html").read_text()
    ids = re.findall(r'<section id="([a-z]+)" class="report-section"', html)
    assert ids == SECTION_IDS
    assert "<h2>Dataset and QC</h2>" in html and "Leakage check: passed" in html
    assert '<tr class="best"><td>pnmf</td>' in html  # the real factorize outputs were read
    assert 'data-status="skipped"' in html and "was not run for this dataset" in html
    assert (demo / "results/demo/report/narrative.json").is_file()
    assert any((demo / "results/demo/report/figures/dataset").glob("*.png"))
    assert "Cell groups are the dataset&#x27;s own labels (group_key &#x27;group&#x27;)." in html
    figures = {p.name for p in (demo / "results/demo/report/figures/analyze").glob("*.png")}
    assert {"domains.png", "cell-types.png", "marker-dotplot.png", "nhood-enrichment.png", "agreement.png"} <= figures
    dry = snakemake(demo, "-n")
    assert "Nothing to be done" in dry.stdout + dry.stderr


@pytest.mark.smoke
def test_snakemake_report_zip_holds_the_figures(demo):
    snakemake(demo, "--report", "report.zip")
    with zipfile.ZipFile(demo / "report.zip") as zf:
        names = zf.namelist()
    assert any(n.endswith("tissue.png") for n in names), names
    assert any(n.startswith("report/data/raw/") and n.endswith("/index.html") for n in names), names
    assert any(n.endswith("factors-pnmf.png") for n in names), names


def test_demo_report_renders_in_chromium(demo, tmp_path):
    shot = ARTIFACTS / "report_demo.png"
    result = browser_check(demo / "results/demo/report/index.html", tmp_path, shot)
    assert result["sections"] == SECTION_IDS
    assert result["images"] >= 4 and result["broken"] == []
    assert result["empty"] == []


def test_every_stage_built_by_the_workflow_shows_in_the_report(finished_run, tmp_path):
    """Dataset `a` of the shared full run: every stage ran, so no section says it was skipped."""
    _, run = finished_run
    html_path = run / "results/a/report/index.html"
    html = html_path.read_text()
    assert 'data-status="skipped"' not in html and "was not run for this dataset" not in html
    for text in ("Model comparison", "Model: geneformer", "SAE on geneformer", "untrained", "In-silico perturbation (geneformer",
                 "Cross-stage agreement", "leiden_geneformer"):
        assert text in html, text
    # embed.activations.max_cells (80) leaves the other cells out of the SAE: named, and grey on its maps
    assert re.search(r"grey: \d+ cells without exported activations", html)
    result = browser_check(html_path, tmp_path, ARTIFACTS / "report_full_run.png")
    assert result["sections"] == SECTION_IDS
    assert result["broken"] == [] and result["empty"] == []
    assert result["images"] >= 10


def test_report_over_every_stage_renders_in_chromium(tmp_path):
    import anndata as ad
    from helpers.report_fixtures import report_defaults, write_preprocessed, write_stage_files

    from tissuelens.io import write_json
    from tissuelens.report.build import build_report
    from tissuelens.report.prompt import make_narrative

    qc, h5ad = write_preprocessed(tmp_path, n_spots=120, n_genes=40)
    adata = ad.read_h5ad(h5ad)
    plan = write_stage_files(tmp_path, adata)
    settings = report_defaults()
    narrative = tmp_path / "narrative.json"
    write_json(make_narrative("demo", {}, json.loads(qc.read_text()), adata, plan,
                              {**settings["narrative"], "image_size": 128}), narrative)
    out = tmp_path / "results/demo/report/index.html"
    build_report("demo", qc, h5ad, plan, settings, {"entry": {}}, out, narrative_path=narrative)
    result = browser_check(out, tmp_path / "profile", ARTIFACTS / "report_all_stages.png")
    assert result["sections"] == SECTION_IDS
    assert result["images"] >= 12 and result["broken"] == []
    assert result["empty"] == []
