"""The workflow used as a Snakemake module (as snakedeploy sets it up): a separate folder with its own
Snakefile and config, nothing of the checkout copied, builds a dataset to its report."""

from __future__ import annotations

import pytest
from helpers.configs import scaleout_config, write_config
from helpers.workflow import REPO, snakemake

pytestmark = pytest.mark.workflow

DEPLOYED_SNAKEFILE = f"""configfile: "config/config.yaml"


module tissuelens:
    snakefile:
        "{REPO / 'workflow' / 'Snakefile'}"
    config:
        config


use rule * from tissuelens as tissuelens_*
"""


def test_the_workflow_runs_as_a_module_of_another(tmp_path):
    deployed = tmp_path / "my-analysis"
    (deployed / "workflow").mkdir(parents=True)
    (deployed / "workflow" / "Snakefile").write_text(DEPLOYED_SNAKEFILE)
    write_config(deployed, scaleout_config(("mine",), minimal=("mine",)))

    snakemake(deployed, "--cores", "2", snakefile=deployed / "workflow" / "Snakefile", timeout=900)
    report = deployed / "results" / "mine" / "report" / "index.html"
    assert report.is_file() and report.stat().st_size > 10_000
    assert (deployed / "results" / "mine" / "factorize" / "pnmf" / "model").is_dir()
    # the marker file named relative to the checkout was found there: the annotation ran
    assert (deployed / "results" / "mine" / "analyze" / "annotation.parquet").is_file()
    assert not (deployed / "workflow" / "scripts").exists()  # nothing of the checkout was copied in
    # and a second run plans nothing
    proc = snakemake(deployed, "-n", "--cores", "2", snakefile=deployed / "workflow" / "Snakefile")
    assert "Nothing to be done" in proc.stdout, proc.stdout[-3000:]
