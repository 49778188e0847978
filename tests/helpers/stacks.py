"""Virtual environments built from the per-rule conda env files (workflow/envs/*.yaml), for running a rule's
script in the stack it declares where conda cannot be installed: the env file's Python (from pyenv,
never downloaded) and exactly its pip list. Cached under ~/.cache/tissuelens/stacks/<name>-<hash>/,
keyed by the env file's content, so CI builds each stack once and reuses it until the file changes.
An env file's `<stem>.post-deploy.sh` beside it (Snakemake's post-deploy script) runs in the new venv
after the pip list, as Snakemake runs it in the new conda env, and is part of the key."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("TISSUELENS_STACK_CACHE", Path.home() / ".cache" / "tissuelens" / "stacks"))
COMPLETE = ".tissuelens-complete"


def env_spec(env_file: Path) -> tuple[str, list[str]]:
    """(python version from `python=X.Y`, pip requirements) of a conda env file."""
    env = yaml.safe_load(Path(env_file).read_text())
    python = next(d.split("=", 1)[1] for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    pip = next((d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d), [])
    return python, list(pip)


def find_python(version: str) -> Path:
    """An interpreter of `version` (X.Y) on this machine: pyenv's versions, then PATH."""
    roots = [Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"]
    for root in roots:
        for cand in sorted(root.glob(f"{version}.*"), reverse=True):
            exe = cand / "bin" / "python"
            if exe.exists():
                return exe
    exe = shutil.which(f"python{version}")
    if exe:
        return Path(exe)
    raise FileNotFoundError(f"no Python {version} on this machine (pyenv versions, python{version} on PATH)")


def post_deploy(env_file: Path) -> Path | None:
    """Snakemake's post-deploy script of a conda env file (`<stem>.post-deploy.sh` beside it), if any."""
    script = Path(env_file).with_name(f"{Path(env_file).stem}.post-deploy.sh")
    return script if script.is_file() else None


def stack_python(env_file: Path, log=sys.stderr) -> Path:
    """The python of the env file's virtual environment, built on first use."""
    env_file = Path(env_file)
    version, pip = env_spec(env_file)
    script = post_deploy(env_file)
    digest = hashlib.sha256(env_file.read_bytes() + (script.read_bytes() if script else b"")).hexdigest()[:12]
    prefix = CACHE / f"{env_file.stem}-{digest}"
    python = prefix / "bin" / "python"
    if (prefix / COMPLETE).exists():
        return python
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    print(f"building the {env_file.name} stack (Python {version}, {len(pip)} pins) in {prefix}", file=log, flush=True)
    steps = [[str(find_python(version)), "-m", "venv", str(prefix)],
             [str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
             [str(python), "-m", "pip", "install", "--quiet", *pip]]
    if script is not None:
        steps.append(["bash", str(script)])
    env = {**os.environ, "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(prefix)}
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{env_file.name} stack: {' '.join(cmd[:4])} ... failed:\n{proc.stderr[-4000:]}")
    (prefix / COMPLETE).write_text(digest)
    return python


def in_stack(python: Path, *args, timeout: int = 1200, **kw) -> subprocess.CompletedProcess:
    """Run `python args...` of a stack with only that stack on PATH and the repository's src/ importable."""
    env = {"PATH": f"{python.parent}{os.pathsep}/usr/bin:/bin", "PYTHONPATH": str(REPO / "src"), "HOME": os.environ.get("HOME", "/root"),
           "MPLBACKEND": "Agg"}
    return subprocess.run([str(python), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout, **kw)


_VERSIONS = ("import sys, json, importlib.util\nfrom importlib import metadata\n"
             "print(json.dumps([sys.version.split()[0], importlib.util.find_spec('flash_attn') is not None, "
             "{d.metadata['Name'].lower().replace('_', '-'): d.version for d in metadata.distributions()}]))")


def stack_mismatches(python: Path, pins: dict[str, str]) -> tuple[str, bool, dict]:
    """(the stack's Python version, whether flash_attn imports, {name: installed version} of every pin it
    does not satisfy); names compared as pip normalises them."""
    proc = in_stack(python, "-c", _VERSIONS)
    assert proc.returncode == 0, proc.stderr
    version, flash, have = json.loads(proc.stdout)
    norm = lambda name: name.lower().replace("_", "-")  # noqa: E731
    return version, flash, {n: have.get(norm(n)) for n, v in pins.items() if have.get(norm(n)) != v}
