"""The fidelity bars of issues #14 and #15 checked against a committed metrics file, as a markdown table.

    python benchmarks/fidelity_bars.py                         # reports/cpu/metrics.json
    python benchmarks/fidelity_bars.py --metrics reports/cpu/metrics.json --json
    python benchmarks/fidelity_bars.py --summary              # every run's ACC, VRA, ERAs and training time

Each bar is (run, metric, minimum in %); the table shows our value with its 95% Wilson interval on the test images
and whether the bar holds.  docs/results.md quotes this table verbatim (a test checks the quote matches the committed
metrics), so the doc cannot drift from the numbers.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.utils import wilson_interval  # noqa: E402

#: (issue, run id, metric, bar in %)
BARS = [
    ("#14", "mixtrain-MNIST_Small-eps0.1", "acc", 98.0), ("#14", "mixtrain-MNIST_Small-eps0.1", "vra", 91.0),
    ("#14", "mixtrain-MNIST_Small-eps0.3", "acc", 94.5), ("#14", "mixtrain-MNIST_Small-eps0.3", "vra", 52.0),
    ("#14", "mixtrain-k20-MNIST_Small-eps0.1", "acc", 99.0), ("#14", "mixtrain-k20-MNIST_Small-eps0.1", "vra", 96.0),
    ("#14", "mixtrain-k20-MNIST_Small-eps0.3", "acc", 93.5), ("#14", "mixtrain-k20-MNIST_Small-eps0.3", "vra", 60.0),
    ("#14", "madry-MNIST_Small-eps0.1", "acc", 98.5), ("#14", "madry-MNIST_Small-eps0.1", "era_pgd", 95.0),
    ("#15", "mixtrain_plus-MNIST_Small-eps0.1", "acc", 98.8), ("#15", "mixtrain_plus-MNIST_Small-eps0.1", "vra", 95.0),
    ("#15", "mixtrain_plus-MNIST_Small-eps0.3", "acc", 96.5), ("#15", "mixtrain_plus-MNIST_Small-eps0.3", "vra", 89.0),
]
N_TEST = 1024
NAMES = {"acc": "ACC", "vra": "VRA", "era_pgd": "ERA(PGD)"}


def rows(metrics: dict) -> list[dict]:
    out = []
    for issue, rid, key, bar in BARS:
        v = (metrics.get(rid) or {}).get(key)
        row = {"issue": issue, "run": rid, "metric": NAMES[key], "bar": bar, "ours": None, "ci95": None,
               "holds": None}
        if v is not None:
            lo, hi = wilson_interval(round(v * N_TEST), N_TEST)
            row.update(ours=100 * v, ci95=[100 * lo, 100 * hi], holds=100 * v >= bar)
        out.append(row)
    return out


def markdown(rs: list[dict]) -> str:
    lines = ["| issue | run | metric | bar | ours [95% CI] | holds |", "|---|---|---|---|---|---|"]
    for r in rs:
        ours = "not run" if r["ours"] is None else f"{r['ours']:.1f} [{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}]"
        holds = "—" if r["holds"] is None else ("yes" if r["holds"] else "**no**")
        lines.append(f"| {r['issue']} | `{r['run']}` | {r['metric']} | ≥ {r['bar']:.1f} | {ours} | {holds} |")
    return "\n".join(lines) + "\n"


def summary_markdown(metrics: dict) -> str:
    """Every run of the metrics file: ACC, VRA, ERA(PGD/CW/Interval) in % and the training time."""
    lines = ["| run | ACC | VRA | ERA PGD | ERA CW | ERA Interval | train time |", "|---|---|---|---|---|---|---|"]
    for rid, m in sorted(metrics.items()):
        cells = [("n/a" if m.get(k) is None else f"{100 * m[k]:.1f}")
                 for k in ("acc", "vra", "era_pgd", "era_cw", "era_interval")]
        t = m.get("train_time_s")
        lines.append(f"| `{rid}` | " + " | ".join(cells) + f" | {'n/a' if t is None else f'{t / 60:.1f} min'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metrics", type=Path, default=ROOT / "reports" / "cpu" / "metrics.json")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--summary", action="store_true", help="print every run's headline numbers instead of the bars")
    args = ap.parse_args()
    if not args.metrics.is_file():
        ap.error(f"--metrics: {args.metrics} does not exist (run the cpu grid first)")
    metrics = json.loads(args.metrics.read_text())
    if args.summary:
        print(summary_markdown(metrics), end="")
        return 0
    rs = rows(metrics)
    print(json.dumps(rs) if args.json else markdown(rs), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
