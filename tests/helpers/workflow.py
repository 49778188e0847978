"""The one Snakemake runner of the tests and benches: run the workflow's CLI in a directory (its own
config/config.yaml, written by tests/helpers/configs.py) and read what it planned or ran."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SNAKEFILE = REPO / "workflow" / "Snakefile"
def snakemake(
    workdir: Path,
    *args,
    cores: int | None = 2,
    profiles=(),
    env: dict | None = None,
    timeout: int = 1800,
    check: bool = True,
    snakefile: Path = SNAKEFILE,
) -> subprocess.CompletedProcess:
    """`snakemake -s workflow/Snakefile [--profile …] --cores 2 ARGS` in `workdir` (the workflow's own profile
    applies; `cores=None` leaves the core count to the profiles, as a cluster run does; a `--cores` in `args`
    wins), under `timeout -s INT -k 30`.

    SIGINT (not SIGTERM, which a polling run ignores) lets Snakemake cancel its jobs and unlock.
    The returned process has stdout and stderr merged in `.stdout` (`.stderr` is "").
    """
    cmd = ["timeout", "-s", "INT", "-k", "30", str(timeout), str(BIN / "snakemake"), "-s", str(snakefile)]
    for profile in profiles:
        cmd += ["--profile", str(REPO / profile)]
    if cores is not None:
        cmd += ["--cores", str(cores)]
    cmd += [str(a) for a in args]
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    full_env.setdefault("MPLBACKEND", "Agg")
    full_env.update(env or {})
    proc = subprocess.run(
        cmd, cwd=workdir, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    proc.stderr = ""  # merged into stdout; "" so that `proc.stdout + proc.stderr` reads the whole output
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-8000:]}")
    return proc


_RULE = re.compile(r"^(?:local)?(?:checkpoint|rule) (\S+):$")
_FIELD = re.compile(r"^    (wildcards|resources): (.*)$")


def planned_jobs(output: str, with_resources: bool = False) -> list[tuple]:
    """(rule, wildcards[, resources]) of every job a `snakemake -n` printed, in order; `all` included."""
    jobs: list[tuple[str, dict[str, str], dict[str, str]]] = []
    for line in output.splitlines():
        m = _RULE.match(line.strip())
        if m:
            jobs.append((m.group(1), {}, {}))
            continue
        m = _FIELD.match(line)
        if m and jobs:
            fields = jobs[-1][1] if m.group(1) == "wildcards" else jobs[-1][2]
            fields.update(kv.split("=", 1) for kv in m.group(2).split(", ") if "=" in kv)
    return jobs if with_resources else [(rule, wc) for rule, wc, _ in jobs]


def plan(workdir: Path, *targets, with_resources: bool = False, **kwargs) -> list[tuple]:
    """The jobs a dry run would execute now, without the job-less target rule `all`."""
    proc = snakemake(workdir, "-n", *targets, **kwargs)
    return [job for job in planned_jobs(proc.stdout, with_resources) if job[0] != "all"]


def list_rules(workdir: Path, **kwargs) -> set[str]:
    proc = snakemake(workdir, "--list-rules", **kwargs)
    # one rule a line, then its docstring in parentheses; skip the "Using profile ..." line
    return {m.group(1) for m in re.finditer(r"^(\w+)(?: \(.*\))?$", proc.stdout, re.M)}


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a finished run directory with modification times kept (reruns compare them)."""
    shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)
    return dst


_RULE_INFO = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.io import is_flagged
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings
with SnakemakeApi(OutputSettings(quiet=set())) as api:
    wf = api.workflow(resource_settings=ResourceSettings(), config_settings=ConfigSettings(),
                      storage_settings=StorageSettings(), snakefile=Path(sys.argv[1]), workdir=Path.cwd())
    print("RULES=" + json.dumps({r.name: {
        "conda": str(r.conda_env) if r.conda_env else None,
        "container": str(r.container_img) if r.container_img else None,
        "norun": r.norun,
        "outputs": [[str(o), bool(is_flagged(o, "directory"))] for o in r.output],
    } for r in wf._workflow.rules}))
"""


def rule_info(workdir: Path, snakefile: Path = SNAKEFILE) -> dict[str, dict]:
    """Per rule: its conda env file, container image, whether it has no job to run, and its output
    patterns with a directory flag, read through Snakemake's API (in a subprocess)."""
    proc = subprocess.run([str(BIN / "python"), "-c", _RULE_INFO, str(snakefile)], cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RULES="))
    return json.loads(line[len("RULES="):])
