"""The workflow on a real (one-node, localhost) SLURM through profiles/slurm.

tests/helpers/slurm_cluster.py installs, starts and stops the cluster once for this module (two fake GPUs);
the runs use the production profile with tests/profiles/slurm-local layered on top (status by squeue,
logs kept, no conda). Run A builds a tiny dataset through every stage next to a dataset whose input
file is broken; run B repairs the file and builds that dataset alone by its target path. Together:
every job went through sbatch and ran under slurmd, GPU jobs got a GPU (CUDA_VISIBLE_DEVICES) on the
GPU partition, the failure was reported as a failed SLURM job and retried with doubled mem_mb, and the
rerun after the failure completed the workflow.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from helpers.configs import scaleout_config, write_config
from helpers.workflow import plan, snakemake
from helpers.slurm_cluster import SlurmCluster, slurm_installed

pytestmark = [pytest.mark.cluster, pytest.mark.workflow]

PROFILES = ("profiles/slurm", "tests/profiles/slurm-local")
PARTITIONS = {"TISSUELENS_SLURM_PARTITION": "cpu", "TISSUELENS_SLURM_GPU_PARTITION": "gpu",
              "TISSUELENS_SLURM_ACCOUNT": "tissuelens-test"}
SUBMITTED = re.compile(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0 and not slurm_installed():
        pytest.skip("the SLURM harness needs root to install slurm-wlm and munge")
    with SlurmCluster(tmp_path_factory.mktemp("slurm"), gpus=2) as running:
        yield running


def run(cluster, workdir, *args, check=True):
    return snakemake(workdir, *args, cores=None, profiles=PROFILES, env={**cluster.env, **PARTITIONS}, timeout=480, check=check)


def submissions(output: str) -> list[tuple[str, str, str]]:
    """(SLURM job id, rule, wildcard values joined by _) for every sbatch of a run, from Snakemake's
    log lines (a job's SLURM log is .snakemake/slurm_logs/rule_<rule>/<wildcard values>/<jobid>.log)."""
    found = []
    for job_id, log in SUBMITTED.findall(output):
        path = Path(log)
        rule = next(p[len("rule_"):] for p in path.parts if p.startswith("rule_"))
        found.append((job_id, rule, path.parent.name))
    return found


def key(rule, wildcards):
    return rule, "_".join(wildcards.values())


def slurm_config():
    """demo: every stage with one factorisation variant; broken: a local file, no embed/SAE/factorize."""
    config = scaleout_config(("demo", "broken"), minimal=("broken",))
    config["factorize"]["variants"] = ["svgp"]
    broken = config["datasets"]["broken"]
    del broken["synthetic"]
    broken.update(source="local", path="broken.h5ad")
    broken["factorize"] = {"enabled": False}
    return config


@pytest.fixture(scope="module")
def run_a(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm-run")
    (workdir / "broken.h5ad").write_text("not an h5ad file\n")
    write_config(workdir, slurm_config())
    planned = plan(workdir, profiles=PROFILES, env=PARTITIONS, with_resources=True)
    proc = run(cluster, workdir, check=False)
    return workdir, planned, proc


def test_every_job_went_through_sbatch(cluster, run_a):
    workdir, planned, proc = run_a
    sent = submissions(proc.stdout)
    assert sent, proc.stdout[-6000:]
    # every planned job was submitted once, except the broken dataset's: its download twice (one retry),
    # the rest never (their input is missing)
    submitted = Counter((rule, wildcards) for _, rule, wildcards in sent)
    expected = Counter(key(rule, wc) for rule, wc, _ in planned if wc.get("dataset") != "broken")
    expected[("download", "broken")] = 2
    assert submitted == expected, (submitted, expected, proc.stdout[-6000:])
    known = cluster.jobs()
    ran = cluster.task_env()
    for job_id, rule, wildcards in sent:
        assert job_id in known, f"slurmctld does not know job {job_id} ({rule})"
        assert job_id in ran, f"job {job_id} ({rule}) never started a task under slurmd"
        assert (workdir / ".snakemake" / "slurm_logs" / f"rule_{rule}" / wildcards / f"{job_id}.log").is_file()
        state = "FAILED" if (rule, wildcards) == ("download", "broken") else "COMPLETED"
        assert known[job_id]["JobState"] == state, (rule, wildcards, known[job_id])
    # the tiny dataset is complete
    assert (workdir / "results" / "demo" / "report" / "index.html").is_file()


def test_gpu_jobs_run_on_the_gpu_partition_with_cuda_visible_devices(cluster, run_a):
    _, planned, proc = run_a
    resources = {key(rule, wc): res for rule, wc, res in planned}
    known = cluster.jobs()
    seen = cluster.task_env()
    gpu_rules = set()
    for job_id, rule, wildcards in submissions(proc.stdout):
        res, job = resources[(rule, wildcards)], known[job_id]
        assert job["Partition"] == res["slurm_partition"], (rule, res, job)
        if res.get("gpu", "0") != "0":
            gpu_rules.add(rule)
            assert job["Partition"] == "gpu" and "gres:gpu:1" in job.get("TresPerJob", ""), (rule, job)
            # every task of the job (batch script, srun step) saw exactly one of the node's GPUs
            assert len(seen[job_id]) == 1 and seen[job_id] <= {"0", "1"}, (rule, seen[job_id])
        else:
            assert "gpu" not in job.get("TresPerJob", ""), (rule, job)
            assert seen[job_id] == {""}, (rule, seen[job_id])
    # one GPU stage of each kind ran on a GPU
    assert {"embed_geneformer", "train_sae", "factorize"} <= gpu_rules, gpu_rules


def test_failing_rule_is_reported_failed_and_retried_with_more_memory(cluster, run_a):
    workdir, _, proc = run_a
    assert proc.returncode != 0
    error = re.search(r"Error in rule download:\n((?:    .*\n)+)", proc.stdout)
    assert error and "resources/datasets/broken/raw.h5ad" in error.group(1), proc.stdout[-6000:]
    assert re.search(r"SLURM-job '\d+' failed, SLURM status is: 'FAILED'", error.group(1))
    assert "broken.h5ad: not an .h5ad or 10x .h5 file" in (workdir / "logs" / "broken" / "download.log").read_text()
    assert not (workdir / "resources" / "datasets" / "broken" / "raw.h5ad").exists()

    known = cluster.jobs()
    attempts = [known[job_id] for job_id, rule, wildcards in submissions(proc.stdout)
                if (rule, wildcards) == ("download", "broken")]
    assert [a["MinMemoryNode"] for a in attempts] == ["4000M", "8000M"], attempts  # mem_mb = 4000 * attempt


def test_rerun_after_the_failure_completes(cluster, run_a):
    workdir, _, _ = run_a
    shutil.copy(workdir / "resources" / "datasets" / "demo" / "raw.h5ad", workdir / "broken.h5ad")
    target = "results/broken/report/index.html"
    proc = run(cluster, workdir, target)
    sent = submissions(proc.stdout)
    assert sent and (workdir / target).is_file()
    ran = cluster.task_env()
    assert all(job_id in ran for job_id, _, _ in sent)
    # only the repaired dataset's jobs ran, and now nothing is left to do
    assert all("broken" in wildcards.split("_") for _, _, wildcards in sent), sent
    assert plan(workdir, profiles=PROFILES, env=PARTITIONS) == []
