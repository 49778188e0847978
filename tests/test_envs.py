"""Software environments and profiles: pinned env files, a software stack on every rule, lint,
containerize, and profiles that name only rules the workflow has."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import yaml
from helpers.configs import scaleout_config, write_config
from helpers.workflow import BIN, REPO, list_rules, rule_info, snakemake

ENV_FILES = sorted((REPO / "workflow" / "envs").glob("*.yaml"))
PROFILES = sorted(REPO.glob("workflow/profiles/*/config.yaml")) + sorted(REPO.glob("profiles/*/config.yaml")) + sorted(REPO.glob("tests/profiles/*/config.yaml"))
# exact conda pins (name=1.2.3 or name==1.2.3) and exact pip pins (name==1.2.3, name[extra]==1.2.3)
CONDA_PIN = re.compile(r"^[A-Za-z0-9_.\-]+(::[A-Za-z0-9_.\-]+)?={1,2}[0-9][A-Za-z0-9_.+!]*$")
PIP_PIN = re.compile(r"^[A-Za-z0-9_.\-]+(\[[A-Za-z0-9_,\-]+\])?==[0-9][A-Za-z0-9_.+!]*$")
# a VCS/URL requirement pinned to a commit or tag
PIP_URL_PIN = re.compile(r"^(\S+ @ )?git\+https://\S+@[0-9A-Za-z_.\-]+(#\S*)?$")


CONDA_STAND_IN = """#!/bin/sh
case "$*" in
  "info --json") echo '{"conda_prefix": "/opt/conda", "platform": "linux-64"}' ;;
  "--version") echo "conda 24.7.1" ;;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}' ;;
  *) echo "conda stand-in: cannot $*" >&2; exit 1 ;;
esac
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("envs")
    write_config(path, scaleout_config(("a",)))
    return path


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_file_parses_with_pinned_dependencies(env_file):
    env = yaml.safe_load(env_file.read_text())
    assert isinstance(env, dict) and env.get("name"), f"{env_file.name}: no name"
    assert env.get("channels"), f"{env_file.name}: no channels"
    assert "defaults" not in env["channels"], f"{env_file.name}: the defaults channel needs a licence"
    unpinned = []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"{env_file.name}: unexpected {dep}"
            unpinned += [d for d in dep["pip"] if not (PIP_PIN.match(d) or PIP_URL_PIN.match(d))]
        elif dep != "pip" and not CONDA_PIN.match(dep):  # pip itself follows python
            unpinned.append(dep)
    assert not unpinned, f"{env_file.name}: not pinned to one version: {unpinned}"
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python=")]
    assert len(python) == 1, f"{env_file.name}: pin python exactly once"


def test_env_pins_are_checked(tmp_path):
    """The pin patterns reject ranges and bare names (so the test above can fail)."""
    for bad in ("numpy", "numpy>=1.26", "numpy=1.*", "torch~=2.3"):
        assert not CONDA_PIN.match(bad) and not PIP_PIN.match(bad), bad
    assert CONDA_PIN.match("python=3.9") and PIP_PIN.match("llm-foundry[gpu]==0.22.0")


def test_loki_env_is_python_39():
    env = yaml.safe_load((REPO / "workflow" / "envs" / "loki.yaml").read_text())
    assert "python=3.9" in env["dependencies"]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "open_clip_torch==2.26.1" in pip and not any(p.split("==")[0] == "loki" for p in pip)


def rule_software(workdir):
    """{rule: (conda env file or None, container image or None, norun)}."""
    return {name: (r["conda"], r["container"], r["norun"]) for name, r in rule_info(workdir).items()}


def test_every_rule_names_a_conda_env_or_container(workdir):
    software = rule_software(workdir)
    assert {"download", "preprocess"} <= set(software)
    missing = [name for name, (conda, container, norun) in software.items() if not norun and not (conda or container)]
    assert not missing, f"rules without conda: or container: {missing}"
    env_names = {p.name for p in ENV_FILES}
    for name, (conda, _container, _norun) in software.items():
        # a function (chosen per job, e.g. download_model by model kind) is checked by --containerize
        if conda and not conda.startswith("<function"):
            assert os.path.basename(conda) in env_names and "/envs/" in conda, f"rule {name}: conda env {conda} is not in workflow/envs/"
    assert software["embed_tahoe"][1] and "tahoe-x1" in software["embed_tahoe"][1], "the Tahoe rule names its image"


def test_lint_is_clean(workdir):
    proc = snakemake(workdir, "--lint", profiles=())
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout, proc.stdout[-4000:]


def test_containerize_lists_every_env(workdir, tmp_path):
    """`snakemake --containerize` writes a Dockerfile that builds every rule's conda env.

    Snakemake asks conda only for its platform name, version and channel priority; where conda is not
    installed (CI), a stand-in answers those three questions and nothing else."""
    proc = snakemake(workdir, "--containerize", profiles=(), env=_conda_stand_in(tmp_path))
    assert proc.stdout.count("FROM condaforge/miniforge3") == 1, proc.stdout[-4000:]
    used = {os.path.basename(c) for c, _, _ in rule_software(workdir).values() if c and not c.startswith("<function")}
    for name in used | {"core.yaml"}:
        assert re.search(rf"COPY \S*workflow/envs/{re.escape(name)} ", proc.stdout), f"{name} missing:\n{proc.stdout[-4000:]}"
    assert "conda env create --prefix" in proc.stdout


def _conda_stand_in(tmp_path) -> dict:
    env = {}
    if shutil.which("conda") is None:
        stub = tmp_path / "bin" / "conda"
        stub.parent.mkdir(exist_ok=True)
        stub.write_text(CONDA_STAND_IN)
        stub.chmod(0o755)
        env["PATH"] = f"{stub.parent}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}"
    return env


def test_tahoe_models_are_fetched_in_the_stack_without_flash_attn(tmp_path):
    """download_model of a Tahoe model runs in workflow/envs/tahoe_cpu.yaml (fetching or building needs no
    flash-attn, so it builds anywhere); embed_tahoe keeps workflow/envs/tahoe.yaml (GPU; its container first).
    Read per job from `snakemake --containerize`, which hashes the env of every job it plans."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["embed"]["models"] = ["tahoe_tiny"]
    write_config(tmp_path, config)
    proc = snakemake(tmp_path, "--containerize", profiles=(), env=_conda_stand_in(tmp_path))
    hashed = set(re.findall(r"Hashing conda environment \S*workflow/envs/(\S+\.yaml)\.", proc.stdout))
    assert {f for f in hashed if f.startswith("tahoe")} == {"tahoe_cpu.yaml", "tahoe.yaml"}, proc.stdout[-3000:]


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: str(p.parent.relative_to(REPO)))
def test_profile_names_only_existing_rules(profile, workdir):
    settings = yaml.safe_load(profile.read_text())
    named = set(settings.get("set-resources", {})) | set(settings.get("set-threads", {}))
    unknown = named - list_rules(workdir)
    assert not unknown, f"{profile.relative_to(REPO)} names rules the workflow lacks: {sorted(unknown)}"


def test_slurm_profile_sends_gpu_rules_to_the_gpu_partition(workdir):
    """A dry run through profiles/slurm resolves the placeholders and the GPU rules' resources."""
    settings = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert settings["executor"] == "slurm"
    assert settings["rerun-triggers"] == ["mtime", "input", "params"]
    assert set(settings["software-deployment-method"]) == {"conda", "apptainer"}
    assert "--nv" in settings["apptainer-args"]
    assert "attempt" in str(settings["default-resources"]["mem_mb"])
    gpu_partition = {name for name, res in settings["set-resources"].items()
                     if res.get("slurm_partition") == "$TISSUELENS_SLURM_GPU_PARTITION"}
    always_gpu = {name for name, res in settings["set-resources"].items() if res.get("gpu") == 1}
    assert {"embed_geneformer", "embed_loki", "embed_tahoe", "perturb_geneformer", "train_sae", "analyze_sae"} <= always_gpu
    assert always_gpu | {"factorize", "narrative"} == gpu_partition

    env = {
        "TISSUELENS_SLURM_ACCOUNT": "acct",
        "TISSUELENS_SLURM_PARTITION": "cpu-part",
        "TISSUELENS_SLURM_GPU_PARTITION": "gpu-part",
    }
    # the env-modules method is a no-op here: it only replaces conda/apptainer, which this machine lacks
    proc = snakemake(workdir, "-n", "--sdm", "env-modules", profiles=("profiles/slurm",), env=env)
    blocks = re.findall(r"^rule (\w+):\n((?:    .*\n)+)", proc.stdout, re.M)
    assert blocks, proc.stdout[-4000:]
    seen = set()
    for rule, body in blocks:
        resources = dict(kv.split("=", 1) for kv in re.search(r"resources: (.*)", body).group(1).split(", "))
        seen.add(rule)
        assert resources["slurm_account"] == "acct", (rule, resources)
        assert "attempt" not in resources["mem_mb"] and int(resources["mem_mb"]) >= 4000, (rule, resources)
        if rule in gpu_partition:
            assert resources["slurm_partition"] == "gpu-part" and "cpus_per_gpu" in resources, (rule, resources)
            # factorize (device auto) holds a GPU by its own rule; the narrative has no checkpoint here
            gpu = "0" if rule == "narrative" else "1"
            assert resources.get("gpu", "0") == gpu, (rule, resources)
        elif rule != "all":
            assert resources["slurm_partition"] == "cpu-part" and resources.get("gpu", "0") == "0", (rule, resources)
    assert {"download", "preprocess", "embed_geneformer", "train_sae", "factorize", "report"} <= seen, seen


def test_install_profile_makes_the_short_form_work(workdir, tmp_path):
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    subprocess.run(["make", "-C", str(REPO), "install-profile"], env=env, check=True, capture_output=True)
    assert (tmp_path / "config" / "snakemake" / "slurm" / "config.yaml").is_file()
    proc = snakemake(workdir, "-n", "--profile", "slurm", "--sdm", "env-modules", profiles=(), env=env)
    # "Using profiles slurm and workflow specific profile …" since workflow/profiles/default exists
    assert re.search(r"Using profiles? slurm\b", proc.stdout) and "slurm_partition=" in proc.stdout, proc.stdout[-3000:]
