"""Peak memory of one training step per method, each in its own process, as the paper's memory comparison.

    python benchmarks/bench_memory.py --model CIFAR_Large --batch 50 --methods wong mixtrain natural --cap-gib 20

Each method runs one optimiser step (loss, backward, step) on a random batch in a fresh Python process.  On CPU the
peak is the process's peak resident set size minus that of the same process after building the model and batch
(so the interpreter, torch and the model weights cancel out); on CUDA it is ``torch.cuda.max_memory_allocated``.
A process that exceeds ``--cap-gib`` is stopped and reported as "> cap" (the paper's "Out of memory").  Parameters:
Wong with its 10 Cauchy projections (params.yaml), MixTrain with k=1 and its default symbolic linear relaxation.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _child(model_name: str, method_name: str, batch: int, eps: float, out: Path) -> None:
    import torch

    from pipeline.config import load_params
    from pipeline.data import NORMALIZATION
    from pipeline.models import build_model
    from pipeline.models.zoo import model_dataset
    from pipeline.train import get_method
    p = load_params(ROOT / "params.yaml")
    ds = model_dataset(model_name)
    norm = NORMALIZATION[ds]
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(model_name, norm.mean, norm.std).to(device)
    shape = (1, 28, 28) if ds == "mnist" else (3, 32, 32)
    x, y = torch.rand(batch, *shape, device=device), torch.randint(0, 10, (batch,), device=device)
    params = {k: (v[ds] if isinstance(v, dict) and set(v) == {"mnist", "cifar10"} else v)
              for k, v in p.methods[method_name].items()}
    if method_name == "mixtrain":
        params.update(k=1, alpha=0.5)
    method = get_method(method_name)(params, ds, 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    t0 = time.perf_counter()
    loss, _ = method.loss(model, x, y, eps)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps({"peak_mb": peak - base, "seconds": time.perf_counter() - t0, "device": str(device)}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="CIFAR_Large")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--eps", type=float, default=2 / 255)
    ap.add_argument("--methods", nargs="+", default=["wong", "mixtrain", "natural"])
    ap.add_argument("--cap-gib", type=float, default=20.0)
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], int(args.child[2]), float(args.child[3]), Path(args.child[4]))
        return 0
    from pipeline.utils.memcap import run_capped
    print(f"model {args.model}, batch {args.batch}, eps {args.eps:.5f}, cap {args.cap_gib} GiB; one training step each")
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in args.methods:
            result = Path(tmp) / f"{m}.json"
            cmd = [sys.executable, __file__, "--child", args.model, m, str(args.batch), str(args.eps), str(result)]
            res = run_capped(cmd, int(args.cap_gib * 2**30))
            if res.out_of_memory:
                peaks[m] = None
                print(f"  {m:10s} > {args.cap_gib} GiB (stopped at {res.peak_rss_mb:.0f} MB RSS)")
            elif res.returncode != 0 or not result.is_file():
                print(f"  {m:10s} failed with exit {res.returncode}")
            else:
                r = json.loads(result.read_text())
                peaks[m] = r["peak_mb"]
                print(f"  {m:10s} {r['peak_mb']:9.0f} MB peak above baseline  ({r['seconds']:.1f} s, {r['device']})")
    if peaks.get("mixtrain"):
        for m, v in peaks.items():
            if m != "mixtrain":
                shown = f"x{v / peaks['mixtrain']:.1f}" if v is not None else f"> x{args.cap_gib * 1024 / peaks['mixtrain']:.1f}"
                print(f"  {m} / mixtrain: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
