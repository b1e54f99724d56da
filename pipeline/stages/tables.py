"""Stage: render the paper's tables (I, III-VIII) as Markdown from the per-run metrics files.

``python -m pipeline.stages.tables --config results/<scale>/config/tables.json --results results/<scale>
--out reports/<scale>`` writes ``tables/table<N>.md``, ``tables.md`` (all of them) and ``metrics.json`` (a flat
summary DVC tracks as metrics).  A cell is a measured value or says why it is missing — "n/a (method not yet
implemented)", "n/a (attack not yet implemented)" — never an invented number.  Proportions are percentages of the
same fixed test subset, with 95% Wilson intervals.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from tabulate import tabulate

from pipeline.utils import atomic_write_json, atomic_write_text

NOT_IMPLEMENTED = "n/a (method not yet implemented)"
NO_ATTACK = "n/a (attack not yet implemented)"
METHOD_NAMES = {"natural": "Baseline", "madry": "Madry", "sinha": "Sinha", "mixtrain": "MixTrain", "wong": "Wong",
                "diffai": "DIFFAI", "external": "External"}
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR"}


def _pct(m: dict, key: str, missing: str) -> str:
    if key not in m or m[key] is None:
        return missing
    lo, hi = m.get(f"{key}_ci95", (None, None))
    ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None else ""
    return f"{100 * m[key]:.1f}{ci}"


def _train(m: dict, key: str) -> str:
    t = (m.get("train") or {}).get(key)
    if t is None:
        return "n/a (not trained here)"
    if key == "batch_time_s":
        return f"{t:.4f} s"
    if key == "peak_mem_mb":
        kind = (m.get("train") or {}).get("peak_mem_kind", "")
        return f"{t:.0f} MB ({'GPU' if kind.startswith('cuda') else 'RSS'})"
    minutes, seconds = divmod(t, 60)
    return f"{int(minutes)}m{seconds:04.1f}s"


def method_label(run: dict, m: dict | None = None) -> str:
    label = METHOD_NAMES.get(run["method"], run["method"])
    extra = ", ".join(f"{k}={v}" for k, v in sorted(run["overrides"].items()))
    history = ((m or {}).get("train") or {}).get("history") or []
    k_used = history[-1].get("k_used") if history else None
    wanted = run["overrides"].get("k")
    if k_used and wanted and k_used != wanted:
        extra += f" ({k_used} used: k is capped at the batch size)"
    return f"{label} ({extra})" if extra else label


Column = tuple[str, Callable[[dict, dict], str]]
IDENTITY = ("Dataset", "Model", "ε", "Method")

COMMON: list[Column] = [
    ("Dataset", lambda r, m: DATASET_NAMES[r["dataset"]]), ("Model", lambda r, m: r["model"]),
    ("ε", lambda r, m: r["eps_text"]), ("Method", lambda r, m: method_label(r, m))]
ACC: Column = ("ACC (%)", lambda r, m: _pct(m, "acc", NOT_IMPLEMENTED))
VRA: Column = ("VRA (%)", lambda r, m: _pct(m, "vra", NOT_IMPLEMENTED))
ERA_PGD: Column = ("ERA PGD (%)", lambda r, m: _pct(m, "era_pgd", NO_ATTACK))
ERA_CW: Column = ("ERA CW (%)", lambda r, m: _pct(m, "era_cw", NO_ATTACK))
ERA_INT: Column = ("ERA Interval (%)", lambda r, m: _pct(m, "era_interval", NO_ATTACK))
BATCH: Column = ("Batch Time", lambda r, m: _train(m, "batch_time_s"))
TRAIN: Column = ("Train Time", lambda r, m: _train(m, "train_time_s"))
MEM: Column = ("Peak Memory", lambda r, m: _train(m, "peak_mem_mb"))

TABLES: dict[str, tuple[str, list[Column]]] = {
    "table1": ("Table I: attack success rate and cost on Madry-trained MNIST_FC1/FC2 (ε=0.3), equal budget",
               [("Model", lambda r, m: r["model"]), ("PGD success", lambda r, m: NO_ATTACK),
                ("CW success", lambda r, m: NO_ATTACK), ("Interval success", lambda r, m: NO_ATTACK)]),
    "table3": ("Table III: MixTrain vs adversarially robust training", COMMON + [BATCH, TRAIN, ACC, ERA_PGD, VRA]),
    "table4": ("Table IV: MixTrain vs verifiably robust training", COMMON + [BATCH, TRAIN, MEM, ACC, ERA_PGD, VRA]),
    "table5": ("Table V: time to first reach MixTrain's VRA (validation split)",
               COMMON + [("Time to MixTrain VRA", lambda r, m: NOT_IMPLEMENTED if not m else
                          "n/a (per-epoch VRA tracking not yet implemented)")]),
    "table6": ("Table VI: MixTrain models under attack and verification",
               COMMON + [ACC, ERA_PGD, ERA_CW, ERA_INT, VRA]),
    "table7": ("Table VII: effect of k (CIFAR_Small)", COMMON + [BATCH, TRAIN, ACC, ERA_PGD, VRA]),
    "table8": ("Table VIII: fixed α=0.5 vs dynamic α (CIFAR_Small)", COMMON + [ACC, ERA_PGD, VRA]),
}


def render(name: str, rows: list[str], cfg: dict, metrics: dict[str, dict]) -> str:
    title, columns = TABLES[name]
    body = []
    for rid in rows:
        run = cfg["runs"][rid]
        m = metrics.get(rid, {})
        if run["method"] not in cfg["implemented_methods"] and run["method"] != "external":
            body.append([f(run, m) if h in IDENTITY else NOT_IMPLEMENTED for h, f in columns])
        else:
            body.append([f(run, m) for _, f in columns])
    devices = sorted({m["provenance"]["device"] for m in metrics.values() if m.get("run_id") in rows})
    commits = sorted({_short(m["provenance"]["commit"]) for m in metrics.values() if m.get("run_id") in rows})
    scale = cfg["scale"]
    banner = (f"> **SMOKE SCALE** — tiny training slices and test subsets: these numbers check the plumbing, they "
              f"are not results.\n\n" if scale == "smoke" else "")
    return (f"## {title}\n\n{banner}"
            f"Scale: `{scale}` · device: {', '.join(devices) or 'n/a'} · commit: {', '.join(commits) or 'n/a'} · "
            f"proportions in % of the fixed test subset, [95% Wilson interval]\n\n"
            + tabulate(body, headers=[h for h, _ in columns], tablefmt="github") + "\n")


def _short(commit: str) -> str:
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def summary(metrics: dict[str, dict]) -> dict[str, Any]:
    keys = ("acc", "vra", "era_pgd", "era_cw", "era_interval")
    out = {}
    for rid, m in sorted(metrics.items()):
        row = {k: m[k] for k in keys if m.get(k) is not None}
        for k in ("batch_time_s", "train_time_s"):
            if (m.get("train") or {}).get(k) is not None:
                row[k] = m["train"][k]
        out[rid] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    cfg = json.loads(args.config.read_text())
    metrics = {}
    for rid in cfg["runs"]:
        path = args.results / "eval" / rid / "metrics.json"
        if path.is_file():
            metrics[rid] = json.loads(path.read_text())
    parts = []
    for name in sorted(TABLES, key=lambda n: int(n[5:])):
        text = render(name, cfg["tables"].get(name, []), cfg, metrics)
        atomic_write_text(args.out / "tables" / f"{name}.md", text)
        parts.append(text)
    atomic_write_text(args.out / "tables.md", f"# Results tables (scale `{cfg['scale']}`)\n\n" + "\n".join(parts))
    atomic_write_json(args.out / "metrics.json", summary(metrics))
    print(f"tables written to {args.out} ({len(metrics)} runs with metrics)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
