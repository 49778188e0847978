"""Shared test helpers: run scripts and snakemake as a user would, in temporary directories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# rules call `python`/`snakemake` from PATH: make it this interpreter's environment
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("MPLBACKEND", "Agg")


def run_script(name: str, *args, cwd=None, check=False) -> subprocess.CompletedProcess:
    """Run scripts/<name>.py like a rule does; returns the completed process (text output)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / f"{name}.py"), *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_snakemake(workdir: Path, *args, profile: str = "profiles/local", check=True, timeout=1800) -> subprocess.CompletedProcess:
    """Run the repo's workflow with `workdir` as working directory (its own config/config.yaml)."""
    cmd = [
        str(BIN / "snakemake"), "-s", str(REPO / "workflow" / "Snakefile"),
        "--profile", str(REPO / profile), "--cores", "2", *map(str, args),
    ]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc


def write_config(workdir: Path, config: dict) -> Path:
    path = workdir / "config" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single `error:` line a script prints for bad input."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, f"expected one error line, got:\n{proc.stderr}"
    return lines[0]


@pytest.fixture
def small_synthetic():
    from tissuelens.datasets.synthetic import make_synthetic

    return make_synthetic(n_spots=200, n_genes=60, n_spatial_factors=2, n_groups=3, seed=1, image_size=128)
