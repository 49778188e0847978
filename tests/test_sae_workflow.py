"""The sae rules as Snakemake plans them: inputs, factor linking, settings split (dry runs only)."""

import json
import shutil

import pytest
import yaml
from helpers.workflow import REPO as ROOT
from helpers.workflow import snakemake

from tissuelens.sae.synthetic import write_export

# dry runs only (seconds): in the fast tier, unmarked


def _config(tmp_path, sae):
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cfg["sae"] = {**cfg.get("sae", {}), **sae}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _dry_run(tmp_path, configfile, target):
    proc = snakemake(tmp_path, "--configfile", configfile, "-n", "-p", "--allowed-rules", "train_sae", "analyze_sae",
                     "--directory", tmp_path, target, cores=1, timeout=300)
    return proc.stdout


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    res = tmp_path / "results" / "demo"
    (res / "factorize" / "svgp").mkdir(parents=True)
    write_export(res / "embed" / "geneformer" / "activations", n_side=6, n_genes=12, tokens_per_cell=6,
                 d_model=16, preprocessed=res / "preprocessed.h5ad", factors=res / "factorize" / "svgp" / "factors.npy")
    return tmp_path


def test_plan_links_the_configured_factors(workdir):
    out = _dry_run(workdir, _config(workdir, {"link_factors": "svgp"}), "results/demo/sae/geneformer/dashboard.html")
    assert "rule train_sae:" in out and "rule analyze_sae:" in out
    assert "results/demo/factorize/svgp/factors.npy" in out and "--factors results/demo/factorize/svgp/factors.npy" in out
    train_cmd = next(line for line in out.splitlines() if "train_sae.py" in line)
    settings = json.loads(train_cmd.split("--settings '")[1].split("'")[0])
    # selection keys and analysis-only keys stay out of the training params (editing them retrains nothing)
    assert not {"models", "link_factors", "enabled", "dashboard_features", "top_genes"} & set(settings)
    assert settings["expansion_factor"] == 8 and settings["k"] == 16


def test_plan_without_factors(workdir):
    out = _dry_run(workdir, _config(workdir, {"link_factors": False}), "results/demo/sae/geneformer/dashboard.html")
    assert "factors.npy" not in out and "--factors" not in out
