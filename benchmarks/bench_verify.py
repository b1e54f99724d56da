"""Wall time of certifying one MNIST_Small model on the committed 1,024 test images with its VRA domain list.

    python benchmarks/bench_verify.py                      # trains a quick model, then times verify
    python benchmarks/bench_verify.py --model m.pt         # an existing MNIST_Small state_dict (pipeline format)
    python benchmarks/bench_verify.py --compare /path/to/other/checkout   # same model, that code too, same run

The quick model: ``--steps`` steps (default 600) of MixTrain over interval bounds on every sample (k = batch 50,
α = 0.5, ε ramped to 0.1 over the first half) from the seeded training split — enough for a model whose samples
are split between the domains (some verified by interval, some needing symbolic_linear or backward, some never),
which is what verification costs on a trained model.  Then ``verify`` (float64, params.yaml's margin_tol and
batch size, the model's ``vra_domains``) runs on the 1,024 committed test images at ε = 0.1, timed once per code
version (``--compare`` runs the other checkout's ``verify`` in a subprocess on the same saved model and images).
Prints the counts per domain and the seconds.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOMAINS = ["interval", "symbolic_linear", "backward"]


def quick_model(steps: int, data_root: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from pipeline.bounds import margin_lower_bounds, verified_loss
    from pipeline.data import NORMALIZATION, load_dataset, split_train_val
    from pipeline.models import build_model
    import torch.nn.functional as F

    data = load_dataset("mnist", data_root).train
    train_idx, _ = split_train_val(len(data), 5000, 0)
    torch.manual_seed(0)
    norm = NORMALIZATION["mnist"]
    model = build_model("MNIST_Small", norm.mean, norm.std)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        pick = train_idx[torch.randint(len(train_idx), (50,), generator=gen).numpy()]
        x, y = data.float_images(pick), data.y[pick]
        eps = 0.1 * min(1.0, (step + 1) / (steps / 2))
        loss = 0.5 * F.cross_entropy(model(x), y) + 0.5 * verified_loss(
            margin_lower_bounds(model, x, y, eps, "interval"), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.state_dict()


def time_verify(root: Path, model_path: Path, data_root: Path, eps: float) -> dict:
    """Run in a fresh interpreter with ``root`` first on the path (so either checkout's code is what runs)."""
    code = f"""
import json, sys, time, torch
sys.path.insert(0, {str(root)!r})
from pipeline.bounds import verify
from pipeline.data import NORMALIZATION, load_split, load_test_subset, subset_indices
from pipeline.models import build_model
torch.set_num_threads(torch.get_num_threads())
norm = NORMALIZATION["mnist"]
model = build_model("MNIST_Small", norm.mean, norm.std)
model.load_state_dict(torch.load({str(model_path)!r}, weights_only=True))
test = load_split("mnist", {str(data_root)!r}, "test")
idx = subset_indices(test, load_test_subset("mnist")[:1024])
x, y = test.float_images(idx), test.y[idx]
t0 = time.perf_counter()
res = verify(model, x, y, {eps}, {DOMAINS!r}, dtype=torch.float64, margin_tol=1e-4, batch_size=16)
dt = time.perf_counter() - t0
counts = {{}}
for d in res.domain:
    counts[str(d)] = counts.get(str(d), 0) + 1
print(json.dumps({{"seconds": dt, "verified": sum(res.verified), "by_domain": counts}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="MNIST_Small state_dict; default: train a quick one")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--compare", type=Path, help="another checkout of this repository, timed on the same model")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model
        if path is None:
            t0 = time.perf_counter()
            path = Path(tmp) / "quick.pt"
            torch.save(quick_model(args.steps, args.data_root), path)
            print(f"quick model: {args.steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
        results = {"this checkout": time_verify(ROOT, path, args.data_root, args.eps)}
        if args.compare:
            results[str(args.compare)] = time_verify(args.compare.resolve(), path, args.data_root, args.eps)
    print(f"verify, MNIST_Small, 1,024 test images, eps {args.eps}, domains {DOMAINS}, float64, "
          f"threads {torch.get_num_threads()}")
    for name, r in results.items():
        print(f"  {name:30s} {r['seconds']:8.1f} s   verified {r['verified']:4d}   by domain {r['by_domain']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
