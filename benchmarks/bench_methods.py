"""Per-batch cost of every training method of the grid, as ratios to natural training measured in one run.

    python benchmarks/bench_methods.py --model MNIST_Small --batch 50 --reps 5 --threads 1
    python benchmarks/bench_methods.py --runs madry-MNIST_Small-eps0.1 wong-MNIST_Small-eps0.1   # a subset

One optimiser step (loss, backward, Adam step) of each run's method with the run's resolved hyperparameters from
params.yaml (the same resolution the trainer uses), at the run's full ε, interleaved round-robin ``reps`` times
after one warm-up so machine noise hits them alike; prints medians and ratios of medians.  Used to size the
``cpu`` scale's epochs per method (docs/results.md) so the grid fits its wall-time budget.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_params  # noqa: E402
from pipeline.data import NORMALIZATION  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.train import get_method  # noqa: E402

DEFAULT_RUNS = ["natural-MNIST_Small-eps0.1", "madry-MNIST_Small-eps0.1", "sinha-MNIST_Small-eps0.1",
                "mixtrain-MNIST_Small-eps0.1", "mixtrain-k20-MNIST_Small-eps0.1", "wong-MNIST_Small-eps0.1",
                "diffai-MNIST_Small-eps0.1"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="run ids of params.yaml (first is the base)")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    p = load_params(ROOT / "params.yaml")
    missing = [r for r in args.runs if r not in p.runs]
    if missing:
        ap.error(f"--runs: {missing} are not runs of params.yaml")
    variants = {}
    for rid in args.runs:
        run = p.runs[rid]
        norm = NORMALIZATION[run.dataset]
        torch.manual_seed(0)
        model = build_model(run.model, norm.mean, norm.std)
        method = get_method(run.method)(p.method_params(run), run.dataset, 0)
        variants[rid] = (model, method, torch.optim.Adam(model.parameters(), lr=1e-3), run.eps)
    shapes = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}

    def step(model, method, opt, eps, x, y) -> float:
        t0 = time.perf_counter()
        model.train()
        loss, _ = method.loss(model, x, y, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    data = {rid: (torch.rand(args.batch, *shapes[p.runs[rid].dataset]), torch.randint(0, 10, (args.batch,)))
            for rid in args.runs}
    times: dict[str, list[float]] = {rid: [] for rid in variants}
    for rid, v in variants.items():
        step(*v, *data[rid])
    for _ in range(args.reps):
        for rid, v in variants.items():
            times[rid].append(step(*v, *data[rid]))
    med = {rid: statistics.median(t) for rid, t in times.items()}
    base = med[args.runs[0]]
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "batch": args.batch, "reps": args.reps,
                          "ms": {r: m * 1000 for r, m in med.items()}, "ratio": {r: m / base for r, m in med.items()}}))
        return 0
    print(f"batch {args.batch}, threads {torch.get_num_threads()}, reps {args.reps} (medians; ratio to {args.runs[0]})")
    for rid, m in med.items():
        print(f"  {rid:44s} {m * 1000:9.1f} ms/batch   x{m / base:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
