"""Per-batch cost of MixTrain against natural training, as ratios measured in one run.

    python benchmarks/bench_mixtrain.py --model MNIST_Small --batch 50 --reps 7 [--domain symbolic_linear]
    python benchmarks/bench_mixtrain.py --ks 1 20 50      # add k = batch (full verified training)
    python benchmarks/bench_mixtrain.py --json            # one JSON object (natural_ms, k1_ratio, k20_over_k1, ...)

One optimiser step each (loss, backward, Adam step) of: natural training and MixTrain with each ``k`` of ``--ks``
(default 1, the paper's setting, and 20; k = batch is full verified training with the same domain).  The variants
are timed interleaved, round-robin, ``reps`` times after one warm-up each, so machine noise hits them alike; the
script prints medians and the ratios of medians.  α is fixed at 0.5 so both terms are computed.

Each step is also tallied op by op (benchmarks/roofline.py) against the machine's rates measured in the same run:
``*_gflop`` and the ratios of the floors, ``k20_over_k1_flop_floor`` (what the two steps' ratio would be if both ran
at the matmul peak: the work itself) and ``k20_over_k1_eager_floor`` (if each op ran at its floor).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.roofline import machine_rates, tally  # noqa: E402
from pipeline.data import NORMALIZATION  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.models.zoo import model_dataset  # noqa: E402
from pipeline.train import get_method  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="MNIST_Small")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--domain", default="symbolic_linear")
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 20], help="MixTrain k values to time (1 is required)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    if 1 not in args.ks or any(k < 1 or k > args.batch for k in args.ks):
        ap.error(f"--ks must contain 1 and values in [1, --batch={args.batch}], got {args.ks}")
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = model_dataset(args.model)
    norm = NORMALIZATION[ds]
    torch.manual_seed(0)
    model = build_model(args.model, norm.mean, norm.std)
    shape = (1, 28, 28) if ds == "mnist" else (3, 32, 32)
    x, y = torch.rand(args.batch, *shape), torch.randint(0, 10, (args.batch,))
    rule = {"kind": "constant", "start": 0.5}
    variants = {"natural": get_method("natural")({}, ds, 0)}
    for k in args.ks:
        variants[f"mixtrain k={k}"] = get_method("mixtrain")(
            {"domain": args.domain, "k": k, "alpha": 0.5, "alpha_rule": rule}, ds, 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(method) -> float:
        t0 = time.perf_counter()
        loss, _ = method.loss(model, x, y, args.eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    times: dict[str, list[float]] = {name: [] for name in variants}
    for method in variants.values():
        step(method)  # warm-up
    rates = machine_rates(max(3, args.reps))
    tallies = {name: tally(lambda: step(method)) for name, method in variants.items()}
    floors = {name: {"gflop": t.flops / 1e9, **t.floors(rates)} for name, t in tallies.items()}
    for _ in range(args.reps):
        for name, method in variants.items():
            times[name].append(step(method))
    med = {name: statistics.median(t) for name, t in times.items()}
    base, k1 = med["natural"], med["mixtrain k=1"]
    if args.json:
        out = {"model": args.model, "batch": args.batch, "domain": args.domain, "eps": args.eps,
               "threads": torch.get_num_threads(), "reps": args.reps, "natural_ms": base * 1000,
               "k1_ms": k1 * 1000, "k1_ratio": k1 / base, "natural_gflop": floors["natural"]["gflop"],
               "k1_gflop": floors["mixtrain k=1"]["gflop"], "rates": rates}
        f1 = floors["mixtrain k=1"]
        for k in args.ks:
            if k != 1:
                name, fk = f"mixtrain k={k}", floors[f"mixtrain k={k}"]
                out[f"k{k}_ms"] = med[name] * 1000
                out[f"k{k}_ratio"] = med[name] / base
                out[f"k{k}_over_k1"] = med[name] / k1
                out[f"k{k}_gflop"] = fk["gflop"]
                out[f"k{k}_over_k1_flop_floor"] = fk["flop_floor_s"] / f1["flop_floor_s"]
                out[f"k{k}_over_k1_eager_floor"] = fk["eager_floor_s"] / f1["eager_floor_s"]
        print(json.dumps(out))
        return 0
    print(f"model {args.model}, batch {args.batch}, domain {args.domain}, eps {args.eps}, "
          f"threads {torch.get_num_threads()}, reps {args.reps} (medians); matmul {rates['matmul_gflops']:.0f} "
          f"GFLOP/s, in-cache {rates['bandwidth_gbs']:.0f} GB/s, {rates['op_us']:.1f} us per eager op")
    for name, m in med.items():
        f = floors[name]
        print(f"  {name:16s} {m * 1000:8.1f} ms/batch  x{m / base:6.2f} natural  x{m / k1:6.2f} k=1   "
              f"{f['gflop']:6.3f} GFLOP  flop floor {f['flop_floor_s'] * 1000:6.2f} ms  "
              f"eager floor {f['eager_floor_s'] * 1000:6.2f} ms (x{m / f['eager_floor_s']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
