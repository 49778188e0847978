"""The whole workflow on synthetic data of growing size: per-rule seconds, peak RSS and growth exponents.

    python bench/bench_scale.py                              # 10,000, 50,000 and 100,000 spots x 2,000 genes
    python bench/bench_scale.py --spots 10000 20000 --genes 1000 --workdir /tmp/scale --keep

Config: config/test/size.yaml (every stage: Geneformer and Loki with tiny models, the SAEs, all five
PNMF-GP variants with a fixed iteration budget, report) with `n_spots`/`n_genes` set. Each size runs
in its own directory (`snakemake --profile profiles/local`); figures come from Snakemake's benchmark
files (`benchmarks/**.tsv`: wall seconds `s`, peak resident memory `max_rss` in MB). The growth
exponent of a rule is the least-squares slope of log(seconds) against log(spots): 1 = linear. Rules
growing faster than linearly (> 1.15) or above 8 GB peak RSS are flagged. Prints tables; never asserts.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from scaleout import size_config, snakemake, write_config  # noqa: E402

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


def run_size(root: Path, n_spots: int, n_genes: int, cores: int, timeout: int) -> tuple[dict, float, bool]:
    workdir = root / f"spots_{n_spots}"
    workdir.mkdir(parents=True, exist_ok=True)
    write_config(workdir, size_config(n_spots, n_genes))
    start = time.perf_counter()
    proc = snakemake(workdir, "--cores", str(cores), "--keep-going", timeout=timeout, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"[{n_spots} spots] snakemake exited {proc.returncode}; tail of its output:\n{proc.stdout[-3000:]}", file=sys.stderr)
    return read_benchmarks(workdir), wall, proc.returncode == 0


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
    parser.add_argument("--spots", type=int, nargs="+", default=[10_000, 50_000, 100_000])
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=6 * 3600, help="seconds per size")
    parser.add_argument("--workdir", type=Path, default=None, help="keep runs here (default: a temporary directory)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        results, walls, ok = {}, {}, {}
        for n in args.spots:
            results[n], walls[n], ok[n] = run_size(root, n, args.genes, args.cores, args.timeout)
            print(f"{n:,} spots x {args.genes:,} genes: {walls[n]:,.0f} s wall, {len(results[n])} jobs benchmarked, "
                  f"{'complete' if ok[n] else 'FAILED'}", flush=True)
        print()
        print(table(args.spots, results))
        if args.json:
            args.json.write_text(json.dumps({"genes": args.genes, "wall_s": walls, "complete": ok,
                                             "rules": {n: results[n] for n in args.spots}}, indent=1))


if __name__ == "__main__":
    main()
