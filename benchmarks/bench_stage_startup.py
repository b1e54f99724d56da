"""Wall time of one cheap training job (the smoke grid's per-job floor), this checkout against another, interleaved.

    python benchmarks/bench_stage_startup.py results/smoke/config/train/natural-MNIST_Small-<hash>.json \
        --compare /path/to/other/checkout --reps 5

Runs ``python -m pipeline.stages.train --config CONFIG --out <tmp>`` ``--reps`` times in this checkout (and, with
``--compare``, alternately in the other one, same interpreter and config), each into a fresh directory, and prints
the median wall seconds and their ratio.  At the smoke scale a training's work is a fraction of a second, so this is
the cost of starting a job: interpreter, imports (torch; torch._dynamo, which torch.optim imports on first use), data
check and load, worker process.  Used in docs/performance.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_run(checkout: Path, config: Path) -> float:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "pipeline.stages.train", "--config", str(config), "--out", d],
                           cwd=checkout, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"the training stage failed in {checkout} ({p.returncode}):\n{p.stderr[-2000:]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", type=Path, help="a per-run training config (a cheap one: smoke scale)")
    ap.add_argument("--compare", type=Path, default=None, help="another checkout of this repository")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.config.is_file():
        ap.error(f"config: {args.config} is not a file")
    if args.compare is not None and not (args.compare / "pipeline/stages/train.py").is_file():
        ap.error(f"--compare: {args.compare} is not a checkout of this repository (no pipeline/stages/train.py)")
    if args.reps < 1:
        ap.error(f"--reps: expected at least 1, got {args.reps}")
    config = args.config.resolve()
    trees = {"this": ROOT, **({"other": args.compare.resolve()} if args.compare else {})}
    walls: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.reps):
        for name, tree in trees.items():
            walls[name].append(one_run(tree, config))
    med = {name: statistics.median(w) for name, w in walls.items()}
    out = {"config": str(args.config), "reps": args.reps, "median_s": med, "runs_s": walls}
    if "other" in med:
        out["this_over_other"] = med["this"] / med["other"]
    if args.json:
        print(json.dumps(out))
    else:
        for name, m in med.items():
            print(f"{name:6s} {trees[name]}: median {m:.2f} s  ({', '.join(f'{w:.2f}' for w in walls[name])})")
        if "other" in med:
            print(f"this / other: {out['this_over_other']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
