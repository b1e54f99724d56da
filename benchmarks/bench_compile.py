"""Does torch.compile (inductor) make a whole training step faster?  Eager vs compiled, per setting, one process each.

    python benchmarks/bench_compile.py                                  # MNIST_Small, the settings below, 2 threads
    python benchmarks/bench_compile.py --settings natural:50 interval:50 --reps 9 --json

Each setting (``domain:batch``, the training steps of ``bench_floor.py``: the loss of a batch and its backward) runs
in a fresh child process, which times the eager step and ``torch.compile`` of the same loss function (forward and,
through AOTAutograd, backward), interleaved, medians of ``--reps`` after two warm-up steps, and reports the compile
time.  A child that dies (the compiled code crashing the process) is reported with its exit status instead of
times, so one crash does not hide the other settings.  The pipeline itself compiles only CROWN-IBP's ReLU step
(``compile_bounds``, :mod:`pipeline.bounds.kernels`); this script measures the whole-step alternative.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["natural:50", "interval:50", "backward_ibp:50", "symbolic_linear:1"]

_CHILD = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import torch.nn.functional as F
from pipeline.bounds import margin_lower_bounds, verified_loss
from pipeline.models import build_model
from pipeline.models.zoo import model_dataset
model_name, domain, batch, reps = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
ds = model_dataset(model_name)
ch, side = (1, 28) if ds == "mnist" else (3, 32)
eps = 0.1 if ds == "mnist" else 2 / 255
torch.manual_seed(0)
model = build_model(model_name, [0.5] * ch, [0.25] * ch)
x, y = torch.rand(batch, ch, side, side), torch.randint(0, 10, (batch,))

def loss_fn(x, y):
    if domain == "natural":
        return F.cross_entropy(model(x), y)
    return verified_loss(margin_lower_bounds(model, x, y, eps, domain), y)

compiled = torch.compile(loss_fn)

def step(fn):
    model.zero_grad(set_to_none=True)
    fn(x, y).backward()

t0 = time.perf_counter()
step(compiled)
compile_s = time.perf_counter() - t0
for _ in range(2):
    step(loss_fn)
    step(compiled)
times = {"eager": [], "compiled": []}
for _ in range(reps):
    for name, fn in (("eager", loss_fn), ("compiled", compiled)):
        t0 = time.perf_counter()
        step(fn)
        times[name].append(time.perf_counter() - t0)
print(json.dumps({"eager_ms": 1000 * statistics.median(times["eager"]),
                  "compiled_ms": 1000 * statistics.median(times["compiled"]), "compile_s": compile_s}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="MNIST_Small")
    ap.add_argument("--settings", nargs="+", default=SETTINGS, help="domain:batch (domain 'natural' = no bound)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per setting (compilation included)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    parsed = []
    for s in args.settings:
        domain, _, batch = s.partition(":")
        if not domain or not batch.isdigit() or int(batch) < 1:
            ap.error(f"--settings: expected domain:batch such as interval:50, got {s!r}")
        parsed.append((domain, int(batch)))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    for domain, batch in parsed:
        try:
            out = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), args.model, domain, str(batch),
                                  str(args.reps)], capture_output=True, text=True, env=env, timeout=args.timeout)
            lines = out.stdout.strip().splitlines()
            if out.returncode == 0 and lines:
                rows.append({"domain": domain, "batch": batch, **json.loads(lines[-1])})
            else:
                errors = [ln for ln in out.stderr.splitlines() if "Error" in ln or "corrupted" in ln
                          or "free()" in ln] or out.stderr.strip().splitlines()[-1:]
                rows.append({"domain": domain, "batch": batch, "returncode": out.returncode,
                             "error": errors[-1].strip()[:200] if errors else ""})
        except subprocess.TimeoutExpired:
            rows.append({"domain": domain, "batch": batch, "returncode": None, "error": f"timeout {args.timeout} s"})
        r = rows[-1]
        if not args.json:
            if "eager_ms" in r:
                print(f"{args.model} {domain:16s} batch {batch:3d}: eager {r['eager_ms']:7.1f} ms, compiled "
                      f"{r['compiled_ms']:7.1f} ms ({r['compiled_ms'] / r['eager_ms']:.2f}x; compile {r['compile_s']:.0f} s)",
                      flush=True)
            else:
                print(f"{args.model} {domain:16s} batch {batch:3d}: the compiled step's process died (exit status "
                      f"{r['returncode']}; {r['error']!r})", flush=True)
    if args.json:
        print(json.dumps({"model": args.model, "threads": args.threads, "reps": args.reps, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
