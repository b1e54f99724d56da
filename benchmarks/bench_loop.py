"""Milliseconds per batch of the real training loop, per torch thread count, this checkout against another, interleaved.

    python benchmarks/bench_loop.py --run mixtrain_plus-MNIST_Small-eps0.3 --threads 1 2 --batches 300 \
        --compare /path/to/other/checkout --reps 3

Each measurement is a fresh process (``OMP_NUM_THREADS`` set before torch starts) that runs the pipeline's trainer
(:func:`pipeline.train.train`) on the run's cpu-scale config with one epoch of ``--batches`` batches, no validation
VRA and no time limit, and reports per batch the epoch's wall time (batch making, steps, progress, and the one
validation-accuracy pass the time limit also counts; not start-up) and the optimiser steps' own time.  Settings are interleaved round-robin ``--reps`` times; the script prints medians and, with
``--compare``, the ratio to the other checkout per thread count.  Unlike ``bench_methods.py`` (the optimiser step
alone) this includes everything around the step: batch making (the producer thread), the progress bar, the loop.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import dataclasses, json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from pipeline.config import load_params
from pipeline.runconfig import train_configs
from pipeline.train import train
import torch
run, batches = sys.argv[2], int(sys.argv[3])
p = load_params(Path(sys.argv[1]) / "params.yaml", {"scale": "cpu"})
c = train_configs(p)[run]
s = dict(c.schedule)
s.update(epochs=1, batches_per_epoch=batches, val_vra_images=0)
s.pop("time_limit_min", None)
c = dataclasses.replace(c, schedule=s)
with tempfile.TemporaryDirectory() as d:
    r = train(c, Path(d), log=lambda m: None)
print(json.dumps({"threads": torch.get_num_threads(), "ms_per_batch": 1000 * r["wall_time_s"] / batches,
                  "step_ms": 1000 * r["train_time_s"] / batches}))
"""


def one_run(checkout: Path, run: str, threads: int, batches: int) -> tuple[float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    p = subprocess.run([sys.executable, "-c", _CHILD, str(checkout), run, str(batches)], cwd=checkout, env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"the trainer failed in {checkout} ({p.returncode}):\n{p.stderr[-2000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if out["threads"] != threads:
        raise SystemExit(f"asked for {threads} threads, torch used {out['threads']}")
    return out["ms_per_batch"], out["step_ms"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="mixtrain_plus-MNIST_Small-eps0.3", help="a run id of params.yaml's cpu grid")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--compare", type=Path, default=None, help="another checkout of this repository")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.compare is not None and not (args.compare / "pipeline/train/trainer.py").is_file():
        ap.error(f"--compare: {args.compare} is not a checkout of this repository (no pipeline/train/trainer.py)")
    if args.reps < 1 or args.batches < 1 or min(args.threads) < 1:
        ap.error("--reps, --batches and --threads must be at least 1")
    sys.path.insert(0, str(ROOT))
    from pipeline.config import load_params
    from pipeline.runconfig import train_configs
    grid = train_configs(load_params(ROOT / "params.yaml", {"scale": "cpu"}))
    if args.run not in grid:
        ap.error(f"--run: {args.run!r} is not a training of the cpu grid (e.g. {sorted(grid)[0]!r})")
    trees = {"this": ROOT, **({"other": args.compare.resolve()} if args.compare else {})}
    ms: dict[str, list[float]] = {f"{name} t{t}": [] for name in trees for t in args.threads}
    step: dict[str, list[float]] = {key: [] for key in ms}
    for _ in range(args.reps):
        for name, tree in trees.items():
            for t in args.threads:
                wall, steps = one_run(tree, args.run, t, args.batches)
                ms[f"{name} t{t}"].append(wall)
                step[f"{name} t{t}"].append(steps)
    med = {key: statistics.median(v) for key, v in ms.items()}
    step_med = {key: statistics.median(v) for key, v in step.items()}
    out = {"run": args.run, "batches": args.batches, "reps": args.reps, "median_ms_per_batch": med,
           "median_step_ms": step_med, "runs": ms}
    if args.compare:
        out["this_over_other"] = {f"t{t}": med[f"this t{t}"] / med[f"other t{t}"] for t in args.threads}
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.run}: one epoch of {args.batches} batches, medians of {args.reps}")
    for key, m in med.items():
        print(f"  {key:10s} {m:7.1f} ms/batch  ({', '.join(f'{v:.1f}' for v in ms[key])}); "
              f"steps alone {step_med[key]:.1f} ms")
    for t, r in out.get("this_over_other", {}).items():
        print(f"  this / other, {t}: {r:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
