"""Time `snakemake -n` for many datasets with every stage enabled: DAG build, then no-op planning.

    python bench/bench_dryrun.py                 # 20 datasets
    python bench/bench_dryrun.py --datasets 50 --repeats 5

Config: tests/configs/scaleout.yaml with every model and factorisation variant, its dataset copied N times. "plan all" is a dry
run in an empty directory (every job planned); "no-op" is a dry run once every planned output exists
(empty placeholders) and `snakemake --touch` has recorded them as up to date: Snakemake still checks
every file's time and every job's params, as after a real run.
Prints seconds (median of the repeats); never asserts anything.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.configs import scaleout_config, write_config  # noqa: E402
from helpers.workflow import planned_jobs, rule_info, snakemake  # noqa: E402


def timed(workdir: Path, *args) -> tuple[float, str]:
    start = time.perf_counter()
    proc = snakemake(workdir, *args, timeout=600)
    return time.perf_counter() - start, proc.stdout


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        names = [f"d{i:03d}" for i in range(args.datasets)]
        config = scaleout_config(names)
        config["embed"]["models"] = list(config["models"])  # every model, every variant
        config["factorize"]["variants"] = ["pnmf", "svgp", "mggp_svgp", "lcgp", "mggp_lcgp"]
        write_config(workdir, config)

        runs = [timed(workdir, "-n") for _ in range(args.repeats)]
        n_jobs = len([job for job in planned_jobs(runs[0][1]) if job[0] != "all"])
        plan_all = statistics.median(t for t, _ in runs)

        # a finished workflow without running it: placeholders for every output, then --touch
        outputs = {name: info["outputs"] for name, info in rule_info(workdir).items()}
        for rule, wildcards in planned_jobs(runs[0][1]):
            for pattern, is_dir in outputs[rule]:
                path = workdir / re.sub(r"\{(\w+)(,[^}]*)?\}", lambda m: wildcards[m.group(1)], pattern)
                if is_dir:
                    path.mkdir(parents=True, exist_ok=True)
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.touch()
        snakemake(workdir, "--touch", cores=1, timeout=600)
        runs = [timed(workdir, "-n") for _ in range(args.repeats)]
        leftover = len([job for job in planned_jobs(runs[0][1]) if job[0] != "all"])
        no_op = statistics.median(t for t, _ in runs)

        start = time.perf_counter()
        snakemake(workdir, "--version", profiles=())
        startup = time.perf_counter() - start

    print(f"datasets: {args.datasets}, jobs: {n_jobs}, repeats: {args.repeats} (median seconds)")
    print(f"  snakemake --version (start-up)   {startup:6.2f} s")
    print(f"  snakemake -n, every job planned  {plan_all:6.2f} s")
    print(f"  snakemake -n, nothing to do      {no_op:6.2f} s   (jobs still planned: {leftover})")


if __name__ == "__main__":
    main()
