"""Benchmark: cost of one training step with each bound domain, relative to a natural step, measured in one run.

    python benchmarks/bench_bounds.py                 # MNIST_Small and CIFAR_Small, batch 50 and 1 (docs/performance.md)
    python benchmarks/bench_bounds.py --memory        # per-sample peak memory on CIFAR_Large / CIFAR_Resnet
    python benchmarks/bench_bounds.py --memory --cap-gib 8

A step is loss + backward + optimiser step (Adam) on CPU/GPU as available; the verified loss uses the whole batch
(k = batch).  The first step is a warm-up and the median of ``--reps`` more is reported, except when one step
takes over 10 s, in which case that single step is the measurement.  Each setting runs in a fresh subprocess (a process's peak RSS only rises), which prints its median step
time over the repetitions and its peak memory; this script prints the table and the ratio to the natural step of the
same model and batch.  Machines here are noisy: compare ratios within one run, not absolute times across runs.
With ``--cap-gib`` the child gets an address-space limit, so running out of memory is an allocation error reported
as a result ("OOM at cap") instead of the kernel's SIGKILL.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: "<domain>+compiled": the domain's training bound with the compiled kernels (pipeline.bounds.kernels; the
#: compilation itself runs in two untimed warm-up steps)
DOMAINS = ["natural", "interval", "symbolic_linear", "backward_ibp", "backward_ibp+compiled", "backward"]


def one(model_name: str, domain: str, batch: int, reps: int, device: str) -> dict:
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    from pipeline.bounds import margin_lower_bounds, verified_loss
    from pipeline.bounds.kernels import compiled_kernels
    from pipeline.models import MODELS, build_model

    torch.manual_seed(0)
    ds = MODELS[model_name][0]
    ch, side = (1, 28) if ds == "mnist" else (3, 32)
    model = build_model(model_name, [0.5] * ch, [0.25] * ch).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, ch, side, side, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    eps = 0.1 if ds == "mnist" else 2 / 255
    compiled = domain.endswith("+compiled")
    domain = domain.removesuffix("+compiled")

    def step() -> None:
        if domain == "natural":
            loss = F.cross_entropy(model(x), y)
        else:
            with compiled_kernels(compiled):
                lb = margin_lower_bounds(model, x, y, eps, domain)
            loss = verified_loss(lb, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(2 if compiled else 0):  # compile outside the timing
        step()
    times: list[float] = []
    for i in range(reps + 1):  # the first repetition warms up ...
        if i == 1 and times[0] > 10:  # ... unless one step takes > 10 s: then it is the measurement
            break
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"median_s": statistics.median(times[1:] or times), "peak_mb": peak}


def run_child(args: list[str], cap_gib: float | None, timeout: int) -> dict:
    def limit() -> None:
        if cap_gib:
            cap = int(cap_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        p = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                           timeout=timeout, preexec_fn=limit, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout}s"}
    if p.returncode != 0:
        tail = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"
        oom = "memory" in tail.lower() or p.returncode in (-9, 137)
        return {"error": f"OOM at cap {cap_gib} GiB" if oom and cap_gib else tail[:120]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=5, metavar=("MODEL", "DOMAIN", "BATCH", "REPS", "DEVICE"))
    ap.add_argument("--memory", action="store_true", help="per-sample memory on CIFAR_Large and CIFAR_Resnet")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--batches", nargs="*", type=int, default=None)
    ap.add_argument("--domains", nargs="*", default=DOMAINS)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cap-gib", type=float, default=None)
    ap.add_argument("--timeout", type=int, default=900)
    args = ap.parse_args()
    if args.child:
        m, d, b, r, dev = args.child
        print(json.dumps(one(m, d, int(b), int(r), dev)))
        return 0
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = args.models or (["CIFAR_Large", "CIFAR_Resnet"] if args.memory else ["MNIST_Small", "CIFAR_Small"])
    batches = args.batches or ([1] if args.memory else [50, 1])
    print(f"device={device} threads={torch.get_num_threads()} torch={torch.__version__} reps={args.reps} "
          f"cap={args.cap_gib} GiB")
    print(f"{'model':13s} {'batch':>5s} {'domain':22s} {'ms/step':>10s} {'x natural':>10s} {'peak MB':>9s}")
    for model in models:
        for batch in batches:
            base = None
            for domain in args.domains:
                res = run_child([model, domain, str(batch), str(args.reps), device], args.cap_gib, args.timeout)
                if "error" in res:
                    print(f"{model:13s} {batch:5d} {domain:22s} {res['error']}", flush=True)
                    continue
                ms = 1000 * res["median_s"]
                base = ms if domain == "natural" else base
                ratio = f"{ms / base:10.1f}" if base else f"{'n/a':>10s}"
                print(f"{model:13s} {batch:5d} {domain:22s} {ms:10.1f} {ratio} {res['peak_mb']:9.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
