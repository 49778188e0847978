"""The workflow on synthetic data of growing size: per-rule seconds, peak RSS and growth exponents.

    python bench/bench_scale.py                              # factorize at the defaults, 10,000-100,000 spots
    python bench/bench_scale.py --spots 10000 --variants svgp pnmf --workdir /tmp/scale
    python bench/bench_scale.py --slideseq                   # 40,000 spots x 2,000 genes, ~5 % non-zero
    python bench/bench_scale.py --stages all --genes 2000    # every stage, tests/configs/size.yaml's budgets

Default (`--stages factorize`): the factorize rules only, on the sharp-edged `blocks` simulation (4 true
spatial factors, NSF's count model) with the factorize settings at the schema defaults except `n_factors: 4`
and `variants`: every variant trains to its plateau, and each row prints recovery (min best-matched
Pearson over the true factors, training cells), the iterations, the stop rule and the training seconds
beside the job's wall seconds and peak memory. `--slideseq` draws sparse counts (background 0.01,
expression_mean 0.2: about 5 % non-zero). `--stages all` runs every stage of tests/configs/size.yaml
(tiny models, a fixed 30-iteration factorize budget: for scaling of the other stages, not of training).

Each size runs in its own directory (`snakemake`); figures come from
Snakemake's benchmark files (`benchmarks/**.tsv`: wall seconds `s`, peak resident memory `max_rss` in
MB). The growth exponent of a rule is the least-squares slope of log(seconds) against log(spots):
1 = linear. Rules growing faster than linearly (> 1.15) or above 8 GB peak RSS are flagged. Prints
tables; never asserts.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.configs import size_config, write_config  # noqa: E402
from helpers.workflow import snakemake  # noqa: E402

FLAG_EXPONENT = 1.15
FLAG_RSS_MB = 8000


def read_benchmarks(workdir: Path) -> dict[str, tuple[float, float]]:
    """rule/variant (dataset name dropped) -> (seconds, peak RSS MB) from every benchmark file."""
    out = {}
    for path in sorted((workdir / "benchmarks").rglob("*.tsv")):
        with open(path) as fh:
            row = next(csv.DictReader(fh, delimiter="\t"))
        parts = path.relative_to(workdir / "benchmarks").with_suffix("").parts
        key = "/".join(parts[1:] if parts[0] != "models" else parts)
        rss = float(row["max_rss"]) if row["max_rss"] not in ("", "NA", "-") else float("nan")
        out[key] = (float(row["s"]), rss)
    return out


def slope(sizes, values) -> float:
    x, y = np.log(np.asarray(sizes, float)), np.log(np.maximum(np.asarray(values, float), 1e-3))
    ok = np.isfinite(y)
    return float(np.polyfit(x[ok], y[ok], 1)[0]) if ok.sum() >= 2 else float("nan")


def factorize_config(n_spots: int, n_genes: int, variants: list[str], slideseq: bool) -> dict:
    """size.yaml's dataset as the blocks simulation (a full square grid: n_spots rounded down to a square),
    preprocess and factorize at the schema defaults (n_factors 4)."""
    config = size_config(math.isqrt(n_spots) ** 2, n_genes)
    synthetic = next(iter(config["datasets"].values()))["synthetic"]
    synthetic.update(pattern="blocks", n_spatial_factors=4, n_nonspatial_factors=0)
    if slideseq:
        synthetic.update(background=0.01, expression_mean=0.2)
    config["preprocess"] = {}  # the schema defaults (2,000 highly variable genes), as a user's first run
    config["factorize"] = {"n_factors": 4, "variants": variants}
    return config


def run_size(root: Path, config: dict, n_spots: int, cores: int, timeout: int, targets) -> tuple[dict, float, bool]:
    workdir = root / f"spots_{n_spots}"
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(workdir, config)
    start = time.perf_counter()
    proc = snakemake(workdir, *targets, "--keep-going", cores=cores, timeout=timeout, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"[{n_spots} spots] snakemake exited {proc.returncode}; tail of its output:\n{proc.stdout[-3000:]}", file=sys.stderr)
    return read_benchmarks(workdir), wall, proc.returncode == 0


def training_rows(workdir: Path, n_spots: int) -> list[dict]:
    """Per variant: recovery, iterations, stop rule and training seconds from its outputs."""
    rows = []
    for metrics in sorted(workdir.glob("results/*/factorize/*/metrics.json")):
        m, variant = json.loads(metrics.read_text()), metrics.parent.name
        training = json.loads((metrics.parent / "model" / "training.json").read_text())
        recovery = (m.get("recovery") or {}).get("pearson_spatial") or [float("nan")]
        rows.append({"spots": n_spots, "variant": variant, "M": m.get("n_inducing"), "min r": round(min(recovery), 3),
                     "iterations": training["iterations"], "stop": training["converged"] or "max_iter",
                     "train s": round(training["seconds"], 1)})
    return rows


def table(sizes, results) -> str:
    rules = sorted({k for r in results.values() for k in r})
    head = "| rule | " + " | ".join(f"{n:,} s | {n:,} MB" for n in sizes) + " | exp. s | exp. MB | flag |"
    lines = [head, "|" + "---|" * (2 * len(sizes) + 4)]
    for rule in rules:
        secs = [results[n].get(rule, (float("nan"), float("nan")))[0] for n in sizes]
        rss = [results[n].get(rule, (float("nan"), float("nan")))[1] for n in sizes]
        es, em = slope(sizes, secs), slope(sizes, rss)
        flag = []
        if es > FLAG_EXPONENT:
            flag.append("superlinear")
        if np.nanmax(rss) > FLAG_RSS_MB:
            flag.append("> 8 GB")
        cells = " | ".join(f"{s:,.1f} | {m:,.0f}" for s, m in zip(secs, rss))
        lines.append(f"| {rule} | {cells} | {es:.2f} | {em:.2f} | {', '.join(flag)} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spots", type=int, nargs="+", default=None,
                        help="sizes (default 10,000 50,000 100,000; 40,000 with --slideseq)")
    parser.add_argument("--genes", type=int, default=None, help="genes (default 500; 2,000 with --slideseq)")
    parser.add_argument("--stages", choices=["factorize", "all"], default="factorize")
    parser.add_argument("--variants", nargs="+", default=["pnmf", "svgp", "mggp_svgp", "lcgp", "mggp_lcgp"])
    parser.add_argument("--slideseq", action="store_true", help="sparse counts as Slide-seq's (about 5 %% non-zero)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=6 * 3600, help="seconds per size")
    parser.add_argument("--workdir", type=Path, default=None, help="keep runs here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    spots = args.spots or ([40_000] if args.slideseq else [10_000, 50_000, 100_000])
    genes = args.genes or (2_000 if args.slideseq or args.stages == "all" else 500)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        results, walls, ok, training = {}, {}, {}, []
        for n in spots:
            if args.stages == "all":
                config, targets = size_config(n, genes), []
            else:
                config = factorize_config(n, genes, args.variants, args.slideseq)
                targets = [f"results/{next(iter(config['datasets']))}/factorize/comparison.csv"]
            results[n], walls[n], ok[n] = run_size(root, config, n, args.cores, args.timeout, targets)
            training += training_rows(root / f"spots_{n}", n)
            print(f"{n:,} spots x {genes:,} genes: {walls[n]:,.0f} s wall, {len(results[n])} jobs benchmarked, "
                  f"{'complete' if ok[n] else 'FAILED'}", flush=True)
        print()
        print(table(spots, results))
        if training:
            import pandas as pd

            print()
            print(pd.DataFrame(training).to_markdown(index=False))
        if args.json:
            args.json.write_text(json.dumps({"genes": genes, "wall_s": walls, "complete": ok, "training": training,
                                             "rules": {n: results[n] for n in spots}}, indent=1))


if __name__ == "__main__":
    main()
