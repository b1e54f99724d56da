"""Per-batch cost of MixTrain against natural training and full verified training, as ratios measured in one run.

    python benchmarks/bench_mixtrain.py --model MNIST_Small --batch 50 --reps 7 [--domain symbolic_linear]

One optimiser step each (loss, backward, Adam step) of: natural training; MixTrain with k=1 (the paper's setting);
MixTrain with k=batch (full verified training: the verified loss on every sample, same domain).  The three are timed
interleaved, round-robin, ``reps`` times after one warm-up each, so machine noise hits them alike; the script prints
medians and the ratios of medians.  α is fixed at 0.5 so both terms are computed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = model_dataset(args.model)
    norm = NORMALIZATION[ds]
    torch.manual_seed(0)
    model = build_model(args.model, norm.mean, norm.std)
    shape = (1, 28, 28) if ds == "mnist" else (3, 32, 32)
    x, y = torch.rand(args.batch, *shape), torch.randint(0, 10, (args.batch,))
    rule = {"kind": "constant", "start": 0.5}
    variants = {
        "natural": get_method("natural")({}, ds, 0),
        "mixtrain k=1": get_method("mixtrain")({"domain": args.domain, "k": 1, "alpha": 0.5, "alpha_rule": rule}, ds, 0),
        f"mixtrain k={args.batch} (full verified)": get_method("mixtrain")(
            {"domain": args.domain, "k": args.batch, "alpha": 0.5, "alpha_rule": rule}, ds, 0),
    }
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
    for _ in range(args.reps):
        for name, method in variants.items():
            times[name].append(step(method))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"model {args.model}, batch {args.batch}, domain {args.domain}, eps {args.eps}, "
          f"threads {torch.get_num_threads()}, reps {args.reps} (medians)")
    base, k1 = med["natural"], med["mixtrain k=1"]
    for name, m in med.items():
        print(f"  {name:32s} {m * 1000:9.1f} ms/batch   x{m / base:7.2f} natural   x{m / k1:7.2f} MixTrain k=1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
