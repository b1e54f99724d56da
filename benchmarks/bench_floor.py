"""How far each training step is from what this machine can do: FLOPs counted, peak measured, ratios in one run.

    python benchmarks/bench_floor.py                        # MNIST_Small and CIFAR_Small, 2 threads
    python benchmarks/bench_floor.py --models MNIST_Small --reps 9 --json

1. The machine's peak: GFLOP/s of a 2048 x 2048 float32 matmul and of a large convolution (batch 64, 64 -> 64
   channels, 3 x 3, 32 x 32), median of ``--reps``.
2. Per model and setting, one training step (loss, backward; no optimiser step) is counted with
   ``torch.utils.flop_counter.FlopCounterMode`` — the FLOPs of every matmul, convolution and batched product the
   step really runs, forward and backward, as the implementation does them (the window form of the symbolic
   relaxation, the centre/radius form of affine maps).  Elementwise work (the ReLU relaxation, abs-sums) is not in
   the count; it is memory traffic, reported as the gap.
3. Each step is timed (interleaved round-robin across settings, median of ``--reps``) and set against its floor,
   ``flops / peak matmul rate``: ``x floor`` = measured time / floor time.

Settings: natural (batch 50), interval/IBP (batch 50), symbolic_linear on 1 sample and on 20 (MixTrain's verified
part for k = 1 and k = 20), backward_ibp / CROWN-IBP (batch 50).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.bounds import margin_lower_bounds, verified_loss  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.models.zoo import model_dataset  # noqa: E402

SETTINGS = [("natural", 50), ("interval", 50), ("symbolic_linear", 1), ("symbolic_linear", 20),
            ("backward_ibp", 50)]


def _median_time(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def peak_rates(reps: int) -> dict[str, float]:
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    mm = 2 * 2048 ** 3 / _median_time(lambda: a @ b, reps) / 1e9
    x, w = torch.rand(64, 64, 32, 32), torch.rand(64, 64, 3, 3)
    conv = 2 * 64 * 64 * 64 * 9 * 32 * 32 / _median_time(lambda: F.conv2d(x, w, padding=1), reps) / 1e9
    return {"matmul_gflops": mm, "conv_gflops": conv}


def make_step(model_name: str, domain: str, batch: int):
    ds = model_dataset(model_name)
    ch, side = (1, 28) if ds == "mnist" else (3, 32)
    torch.manual_seed(0)
    model = build_model(model_name, [0.5] * ch, [0.25] * ch)
    x, y = torch.rand(batch, ch, side, side), torch.randint(0, 10, (batch,))
    eps = 0.1 if ds == "mnist" else 2 / 255

    def step():
        if domain == "natural":
            loss = F.cross_entropy(model(x), y)
        else:
            lb = margin_lower_bounds(model, x, y, eps, domain)
            loss = verified_loss(lb, y)
        model.zero_grad(set_to_none=True)
        loss.backward()
    return step


def count_flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["MNIST_Small", "CIFAR_Small"])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peak = peak_rates(args.reps)
    steps = {(m, d, b): make_step(m, d, b) for m in args.models for d, b in SETTINGS}
    flops = {key: count_flops(fn) for key, fn in steps.items()}
    times: dict[tuple, list[float]] = {key: [] for key in steps}
    for fn in steps.values():
        fn()  # warm-up
    for _ in range(args.reps):
        for key, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    rows = []
    for (m, d, b), ts in times.items():
        med = statistics.median(ts)
        natural = statistics.median(times[(m, "natural", 50)])
        floor = flops[(m, d, b)] / (peak["matmul_gflops"] * 1e9)
        rows.append({"model": m, "domain": d, "batch": b, "gflop": flops[(m, d, b)] / 1e9, "ms": med * 1000,
                     "x_natural_b50": med / natural, "floor_ms": floor * 1000, "x_floor": med / floor if floor else None,
                     "achieved_gflops": flops[(m, d, b)] / med / 1e9})
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "reps": args.reps, **peak, "rows": rows}))
        return 0
    print(f"threads {torch.get_num_threads()}, reps {args.reps} (medians); peak: matmul 2048^2 "
          f"{peak['matmul_gflops']:.0f} GFLOP/s, conv 64x64x3x3@32^2 b64 {peak['conv_gflops']:.0f} GFLOP/s")
    print(f"{'model':12s} {'domain':16s} {'batch':>5s} {'GFLOP':>8s} {'ms':>8s} {'x nat50':>8s} {'floor ms':>9s} "
          f"{'x floor':>8s} {'GFLOP/s':>8s}")
    for r in rows:
        print(f"{r['model']:12s} {r['domain']:16s} {r['batch']:5d} {r['gflop']:8.3f} {r['ms']:8.1f} "
              f"{r['x_natural_b50']:8.2f} {r['floor_ms']:9.2f} {r['x_floor']:8.1f} {r['achieved_gflops']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
