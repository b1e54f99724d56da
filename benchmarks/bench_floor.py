"""How far each training step is from what this machine can do: work counted, rates measured, ratios in one run.

    python benchmarks/bench_floor.py                        # MNIST_Small and CIFAR_Small, 2 threads
    python benchmarks/bench_floor.py --models MNIST_Small --reps 9 --json

1. The machine's rates (benchmarks/roofline.py, same process and threads): GFLOP/s of a 2048 x 2048 float32 matmul
   and of a large convolution, the in-cache bandwidth of an elementwise op, and the fixed cost of one eager op.
2. Per model and setting, one training step (loss, backward; no optimiser step) is tallied op by op below autograd
   (:class:`roofline.OpTally`): the FLOPs of every matmul, convolution and batched product (the formulas of
   ``torch.utils.flop_counter``; elementwise ops count 0), the bytes every op reads and writes, and the op count —
   as the implementation does them (the window form of the symbolic relaxation, the centre/radius form of affine maps).
3. Each step is timed (interleaved round-robin across settings, median of ``--reps``) and set against two floors:
   the FLOP floor (FLOPs / matmul peak: the computation's) and the eager floor (per op the max of its FLOPs / peak,
   its bytes / bandwidth and the fixed cost of an op, summed: this op sequence's, run op by op).  ``fl/nat`` and
   ``eag/nat``: each floor over the natural step's, the "x natural" a step would show if both ran at their floors
   (a target below them needs the step to run closer to its floor than the natural step does).

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.roofline import machine_rates, tally  # noqa: E402

from pipeline.bounds import margin_lower_bounds, verified_loss  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.models.zoo import model_dataset  # noqa: E402

SETTINGS = [("natural", 50), ("interval", 50), ("symbolic_linear", 1), ("symbolic_linear", 20),
            ("backward_ibp", 50)]


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["MNIST_Small", "CIFAR_Small"])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rates = machine_rates(args.reps)
    steps = {(m, d, b): make_step(m, d, b) for m in args.models for d, b in SETTINGS}
    for fn in steps.values():
        fn()  # warm-up (and lazily built state) before the tally
    tallies = {key: tally(fn) for key, fn in steps.items()}
    times: dict[tuple, list[float]] = {key: [] for key in steps}
    for _ in range(args.reps):
        for key, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    rows = []
    for (m, d, b), ts in times.items():
        med = statistics.median(ts)
        natural = statistics.median(times[(m, "natural", 50)])
        t = tallies[(m, d, b)]
        floors = t.floors(rates)
        nat_floors = tallies[(m, "natural", 50)].floors(rates)
        rows.append({"model": m, "domain": d, "batch": b, "gflop": t.flops / 1e9, "mbytes": t.bytes / 1e6,
                     "ops": len(t.ops), "ms": med * 1000, "x_natural_b50": med / natural,
                     "floor_ms": floors["flop_floor_s"] * 1000, "x_floor": med / floors["flop_floor_s"],
                     "eager_floor_ms": floors["eager_floor_s"] * 1000,
                     "x_eager_floor": med / floors["eager_floor_s"], "achieved_gflops": t.flops / med / 1e9,
                     # the ratio to natural a step would have if both ran at their floors: what "x natural"
                     # targets can be, unless this step runs closer to its floor than the natural step does
                     "floor_x_natural": floors["flop_floor_s"] / nat_floors["flop_floor_s"],
                     "eager_floor_x_natural": floors["eager_floor_s"] / nat_floors["eager_floor_s"]})
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "reps": args.reps, **rates, "rows": rows}))
        return 0
    print(f"threads {torch.get_num_threads()}, reps {args.reps} (medians); matmul 2048^2 "
          f"{rates['matmul_gflops']:.0f} GFLOP/s, conv 64x64x3x3@32^2 b64 {rates['conv_gflops']:.0f} GFLOP/s, "
          f"in-cache bandwidth {rates['bandwidth_gbs']:.0f} GB/s, {rates['op_us']:.1f} us per eager op")
    print(f"{'model':12s} {'domain':16s} {'batch':>5s} {'GFLOP':>7s} {'MB':>7s} {'ops':>5s} {'ms':>7s} "
          f"{'x nat50':>7s} {'flop fl':>7s} {'x fl':>6s} {'eager fl':>8s} {'x eager':>7s} {'fl/nat':>6s} "
          f"{'eag/nat':>7s}")
    for r in rows:
        print(f"{r['model']:12s} {r['domain']:16s} {r['batch']:5d} {r['gflop']:7.3f} {r['mbytes']:7.1f} "
              f"{r['ops']:5d} {r['ms']:7.1f} {r['x_natural_b50']:7.2f} {r['floor_ms']:7.2f} {r['x_floor']:6.1f} "
              f"{r['eager_floor_ms']:8.2f} {r['x_eager_floor']:7.2f} {r['floor_x_natural']:6.2f} "
              f"{r['eager_floor_x_natural']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
