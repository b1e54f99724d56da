"""Stage: render the paper's tables (I, III-VIII) as Markdown from the per-run metrics files.

``python -m pipeline.stages.tables --config results/<scale>/config/tables.json --results results/<scale>
--out reports/<scale>`` writes ``tables/table<N>.md``, ``tables.md`` (all of them) and ``metrics.json`` (a flat
summary DVC tracks as metrics).  A cell is a measured value or says why it is missing — "n/a (method not yet
implemented)", "n/a (attack not yet implemented)" — never an invented number.  Proportions are percentages of the
same fixed test subset, with 95% Wilson intervals.

Tables I and III-VI put the paper's published value under each of our rows ("↳ paper", from
:mod:`pipeline.paper`): the paper's number, the difference ours − paper, and ✗ where the paper's value lies outside
our 95% interval; a cell the paper data has no number for says n/a with a footnote giving why.  Each table's header
states the training schedule (epochs, ε ramp, learning-rate decay) per method, as each run's train config has it.
Rows computed from different dataset files (the ``data_sha256`` the train/evaluate stages record) are refused.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from tabulate import tabulate

from pipeline.errors import PipelineError
from pipeline.paper import DEFAULT_PATH as PAPER_NUMBERS
from pipeline.paper import PaperNumbers, load_paper_numbers
from pipeline.paper.cells import (PAPER_COLUMNS, PAPER_LABEL, PAPER_TABLES, Footnotes, min_sec, ours_value,
                                  paper_cell, paper_legend)
from pipeline.wallclock import plot_wallclock, wallclock_data
from pipeline.utils import atomic_write_json, atomic_write_text, wilson_interval

__all__ = ["TABLES", "PAPER_TABLES", "PAPER_COLUMNS", "DataMismatchError", "render", "time_to_target",
           "check_data_hashes", "data_hashes", "ours_value", "paper_cell", "schedule_section", "summary", "main"]

NOT_IMPLEMENTED = "n/a (method not yet implemented)"
NO_ATTACK = "n/a (not measured)"
METHOD_NAMES = {"natural": "Baseline", "madry": "Madry", "sinha": "Sinha", "mixtrain": "MixTrain",
                "mixtrain_plus": "MixTrain+ (this project's method, not the paper's)", "wong": "Wong",
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
    return min_sec(t)


def method_label(run: dict, m: dict | None = None) -> str:
    label = METHOD_NAMES.get(run["method"], run["method"])
    extra = ", ".join(f"{k}={v}" for k, v in sorted(run["overrides"].items()))
    history = ((m or {}).get("train") or {}).get("history") or []
    k_used = history[-1].get("k_used") if history else None
    wanted = run["overrides"].get("k")
    if k_used and wanted and k_used != wanted:
        extra += f" ({k_used} used: k is capped at the batch size)"
    return f"{label} ({extra})" if extra else label


def _budget(m: dict) -> str:
    t = m.get("table1")
    return NO_ATTACK if not t else f"{t['budget_passes']}"


def _t1(m: dict, attack: str) -> str:
    """Success rate over the correctly classified images, with the passes and wall time the attack spent."""
    a = ((m.get("table1") or {}).get("attacks") or {}).get(attack)
    if not a:
        return NO_ATTACK
    lo, hi = wilson_interval(a["success"], a["attacked"]) if a["attacked"] else (0.0, 1.0)
    over = (" (one run exceeds the budget)" if a.get("over_budget") else
            " (restart cap reached: budget not spent)" if a.get("run_cap_reached") else "")
    return (f"{100 * a['rate']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] of {a['attacked']} · {a['passes']} passes{over} · "
            f"{a['seconds']:.1f} s")


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
               [("Model", lambda r, m: r["model"]), ("Budget (passes)", lambda r, m: _budget(m)),
                ("PGD success", lambda r, m: _t1(m, "pgd")), ("CW success", lambda r, m: _t1(m, "cw")),
                ("Interval success", lambda r, m: _t1(m, "interval"))]),
    "table3": ("Table III: MixTrain vs adversarially robust training", COMMON + [BATCH, TRAIN, ACC, ERA_PGD, VRA]),
    "table4": ("Table IV: MixTrain vs verifiably robust training", COMMON + [BATCH, TRAIN, MEM, ACC, ERA_PGD, VRA]),
    "table5": ("Table V: training time to first reach MixTrain's VRA on the validation split",
               COMMON + [("Target VRA (MixTrain, val)", lambda r, m: m.get("table5_target", "n/a")),
                         ("Time to target", lambda r, m: m.get("table5_time", "n/a"))]),
    "table6": ("Table VI: MixTrain models under attack and verification",
               COMMON + [ACC, ERA_PGD, ERA_CW, ERA_INT, VRA]),
    "table7": ("Table VII: effect of k (CIFAR_Small)", COMMON + [BATCH, TRAIN, ACC, ERA_PGD, VRA]),
    "table8": ("Table VIII: fixed α=0.5 vs dynamic α (CIFAR_Small)", COMMON + [ACC, ERA_PGD, VRA]),
}


# ---- the paper beside every cell (Tables I, III-VI) ----

#: our tables that carry a "↳ paper" row under each of our rows (the paper's Tables I, III, IV, V, VI)
class DataMismatchError(PipelineError, ValueError):
    """Rows of the tables were computed from different dataset files (their recorded sha256 differ)."""


def _paper_row(name: str, rid: str, columns: list[Column], m: dict, measured: bool, paper: PaperNumbers,
               notes: Footnotes) -> list[str]:
    label_at = max(i for i, (h, _) in enumerate(columns) if h in IDENTITY)
    row = []
    for i, (h, _) in enumerate(columns):
        if i == label_at:
            row.append(PAPER_LABEL)
        elif h not in PAPER_COLUMNS:
            row.append("")
        else:
            col = PAPER_COLUMNS[h]
            ours, ci = ours_value(m, col) if measured else (None, None)
            row.append(paper_cell(paper.lookup(name, rid, col), ours, ci, notes))
    return row


# ---- training schedule per method (table headers) ----

OPTIMIZER_NAMES = {"adam": "Adam", "sgd": "SGD"}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _schedule_text(t: dict) -> str:
    per_epoch = f" ({_plural(t['batches_per_epoch'], 'batch')}/epoch)" if t.get("batches_per_epoch") else ""
    eps = ("no ε (the method ignores it)" if t.get("eps_free") else
           f"ε ramped from {t['eps_start']:g} over {_plural(t['eps_ramp_epochs'], 'epoch')}")
    return (f"{_plural(t['epochs'], 'epoch')} × batch {t['batch_size']}{per_epoch} · "
            f"{OPTIMIZER_NAMES.get(t['optimizer'], t['optimizer'])} lr {t['lr']:g}, "
            f"×{t['lr_decay_factor']:g} every {_plural(t['lr_decay_every'], 'epoch')} · {eps}"
            + (f" · stopped at {t['time_limit_min']:g} min of training wall time (last weights kept)"
               if t.get("time_limit_min") is not None else ""))


def schedule_section(rows: list[str], cfg: dict) -> str:
    """Epochs, ε ramp and learning-rate decay per method, as the runs' train configs have them (params.yaml's
    ``scales.<scale>`` and ``optim``); grouped where methods share one.  Empty if the config does not carry them."""
    keyed: list[tuple[str, str, str]] = []  # (group text, label, label with ε)
    for rid in rows:
        run = cfg["runs"][rid]
        t = run.get("train")
        if not t:
            continue
        dataset = DATASET_NAMES.get(run["dataset"], run["dataset"])
        label = METHOD_NAMES.get(run["method"], run["method"]).split(" (")[0] + "".join(
            f" {k}={v}" for k, v in sorted((run.get("overrides") or {}).items()))
        keyed.append((f"{dataset} — " + "{}" + f": {_schedule_text(t)}", label, f"{label} ε={run['eps_text']}"))
    # a label whose runs have different schedules (a per-run schedule override) is told apart by its ε
    texts: dict[str, set[str]] = {}
    for text, label, _ in keyed:
        texts.setdefault(label, set()).add(text)
    groups: dict[str, list[str]] = {}
    for text, label, with_eps in keyed:
        labels = groups.setdefault(text, [])
        shown = with_eps if len(texts[label]) > 1 else label
        if shown not in labels:
            labels.append(shown)
    if not groups:
        return ""
    return ("Training per method (params.yaml, as each run's train config has it):\n\n"
            + "".join(f"- {line.format(', '.join(labels))}\n" for line, labels in groups.items()) + "\n")


# ---- one data version per report ----

def data_hashes(m: dict) -> dict[str, str]:
    """The dataset file -> sha256 a run recorded (metrics ``data_sha256`` or ``provenance.data_sha256``); ``{}`` for
    metrics written before the record existed (unknown, never a mismatch)."""
    out: dict[str, str] = {}
    for rec in (m.get("data_sha256"), (m.get("provenance") or {}).get("data_sha256")):
        if isinstance(rec, dict):
            out.update({str(k): str(v) for k, v in rec.items() if v})
    return out


def _some(rids: list[str], most: int = 6) -> str:
    return ", ".join(rids) if len(rids) <= most else f"{', '.join(rids[:most - 1])} and {len(rids) - most + 1} more runs"


def check_data_hashes(runs: list[str], metrics: dict[str, dict]) -> str:
    """Refuse (:class:`DataMismatchError`, naming the files and runs) when two runs recorded different sha256 for the
    same dataset file; missing records are unknown, not a mismatch.  Returns a one-line summary for the header."""
    seen: dict[str, dict[str, list[str]]] = {}   # file -> sha256 -> runs
    unknown = []
    for rid in dict.fromkeys(runs):
        if rid not in metrics:
            continue
        hashes = data_hashes(metrics[rid])
        if not hashes:
            unknown.append(rid)
        for name, sha in hashes.items():
            seen.setdefault(name, {}).setdefault(sha, []).append(rid)
    clashes = {name: by for name, by in seen.items() if len(by) > 1}
    if clashes:
        lines = [f"  {name}: " + "; ".join(f"{sha[:12]} in {_some(rids)}" for sha, rids in by.items())
                 for name, by in sorted(clashes.items())]
        raise DataMismatchError("refusing to put rows computed from different data in one report; dataset files "
                                "whose sha256 differ between runs:\n" + "\n".join(lines)
                                + "\nre-run the stale runs on the current data (snakemake reruns them once their "
                                  "inputs change) or restore the data they were computed from")
    known = len([r for r in dict.fromkeys(runs) if r in metrics]) - len(unknown)
    if not seen:
        return "data sha256: not recorded by these runs"
    return (f"data: {_plural(len(seen), 'file')}, same sha256 in all {known} runs that record it"
            + (f" ({len(unknown)} do not)" if unknown else ""))


def _history(m: dict) -> list[dict]:
    return (m.get("train") or {}).get("history") or []


def time_to_target(rows: list[str], cfg: dict, metrics: dict[str, dict], budget_s: float) -> dict[str, dict]:
    """Table V cells: per (model, ε) group, the target is the MixTrain row's validation VRA after its last epoch;
    each row reports the training time (epoch granularity) at which its validation VRA first reached it."""
    targets = {}
    for rid in rows:
        run, hist = cfg["runs"][rid], _history(metrics.get(rid, {}))
        if run["method"] == "mixtrain" and hist and hist[-1].get("val_vra") is not None:
            targets[(run["model"], run["eps"])] = hist[-1]["val_vra"]
    cells = {}
    for rid in rows:
        run, m = cfg["runs"][rid], metrics.get(rid, {})
        target = targets.get((run["model"], run["eps"]))
        if target is None:
            cells[rid] = {"table5_target": "n/a (no MixTrain validation VRA for this model and ε)"}
            continue
        hit = next((h for h in _history(m) if h.get("val_vra") is not None and h["val_vra"] >= target), None)
        if m.get("status") == "out_of_memory":
            when = "Out of memory"
        elif not _history(m):
            when = "n/a (no training history)"
        elif hit is None or hit["train_time_s"] > budget_s:
            when = f">{budget_s:g} s (budget; best {100 * max(h.get('val_vra') or 0 for h in _history(m)):.1f}%)"
        else:
            when = f"{hit['train_time_s']:.1f} s (epoch {hit['epoch']})"
        cells[rid] = {"table5_target": f"{100 * target:.1f}%", "table5_time": when}
    return cells


def _out_of_memory_row(columns: list[Column], run: dict, m: dict, cap_gib: float | None) -> list[str]:
    peak = (m.get("train") or {}).get("peak_mem_mb")
    text = f"Out of memory (peak >= {peak:.0f} MB, cap {cap_gib} GiB)" if peak is not None else "Out of memory"
    return [f(run, m) if h in IDENTITY else text for h, f in columns]


def render(name: str, rows: list[str], cfg: dict, metrics: dict[str, dict], paper: PaperNumbers | None = None) -> str:
    """One table as Markdown; with ``paper``, Tables I and III-VI get a "↳ paper" row under each of ours."""
    title, columns = TABLES[name]
    extra = time_to_target(rows, cfg, metrics, cfg["time_budget_s"]) if name == "table5" else {}
    compare = paper is not None and name in PAPER_TABLES
    notes = Footnotes()
    body = []
    for rid in rows:
        run = cfg["runs"][rid]
        m = {**metrics.get(rid, {}), **extra.get(rid, {})}
        measured = False
        if run["method"] not in cfg["implemented_methods"] and run["method"] != "external":
            body.append([f(run, m) if h in IDENTITY else NOT_IMPLEMENTED for h, f in columns])
        elif m.get("status") == "out_of_memory":
            body.append(_out_of_memory_row(columns, run, m, cfg.get("memory_cap_gib")))
        else:
            body.append([f(run, m) for _, f in columns])
            measured = True
        if compare:
            assert paper is not None
            body.append(_paper_row(name, rid, columns, m, measured, paper, notes))
    devices = sorted({m["provenance"]["device"] for m in metrics.values() if m.get("run_id") in rows})
    commits = sorted({_short(m["provenance"]["commit"]) for m in metrics.values() if m.get("run_id") in rows})
    data = check_data_hashes(rows, metrics)
    scale = cfg["scale"]
    banner = (f"> **SMOKE SCALE** — tiny training slices and test subsets: these numbers check the plumbing, they "
              f"are not results.\n\n" if scale == "smoke" else "")
    return (f"## {title}\n\n{banner}"
            f"Scale: `{scale}` · device: {', '.join(devices) or 'n/a'} · commit: {', '.join(commits) or 'n/a'} · "
            f"{data} · proportions in % of the fixed test subset, [95% Wilson interval]\n\n"
            + schedule_section(rows, cfg)
            + (paper_legend(paper) if compare and paper is not None else "")
            + tabulate(body, headers=[h for h, _ in columns], tablefmt="github", disable_numparse=True) + "\n"
            + notes.section())


def _short(commit: str) -> str:
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


FIGURE_TITLES = {"fig2": "Fig. 2: losses found by PGD, CW and the interval attack from random starts",
                 "fig4": "Fig. 4: verified robust loss, all training images vs a random k-sample",
                 "fig5": "Fig. 5: ERA(PGD) and VRA against ε",
                 "fig7": "Fig. 7: ACC, ERA(PGD) and VRA against a fixed α (CIFAR_Small)",
                 "wallclock": "Validation VRA against training wall-clock: MixTrain, MixTrain+ (this project's method) "
                              "and the best certified baseline"}


def figures_section(figures: list[str]) -> str:
    """Markdown links to the drawn figures (their data: the JSON beside each PNG)."""
    if not figures:
        return "No figure is configured for this grid (params.yaml `figures`).\n"
    return "".join(f"- {FIGURE_TITLES[f]}: ![{f}]({f}.png) (data: [{f}.json]({f}.json))\n" for f in figures)


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
    ap.add_argument("--paper", type=Path, default=None,
                    help="the paper's numbers (default: pipeline/paper/mixtrain_paper.yaml)")
    args = ap.parse_args(argv)
    cfg = json.loads(args.config.read_text())
    metrics = {}
    for rid in cfg["runs"]:
        path = args.results / "eval" / rid / "metrics.json"
        if path.is_file():
            metrics[rid] = json.loads(path.read_text())
    try:  # refuse before writing anything: mixed data, or a malformed paper-numbers file
        check_data_hashes([rid for rows in cfg["tables"].values() for rid in rows], metrics)
        paper = load_paper_numbers(args.paper or PAPER_NUMBERS)
    except PipelineError as e:
        print(f"tables: {e}", file=sys.stderr)
        return 1
    parts = []
    for name in sorted(TABLES, key=lambda n: int(n[5:])):
        text = render(name, cfg["tables"].get(name, []), cfg, metrics, paper)
        atomic_write_text(args.out / "tables" / f"{name}.md", text)
        parts.append(text)
    panels = wallclock_data(cfg["runs"], metrics)  # MixTrain+ vs MixTrain vs the best baseline, per (model, ε)
    atomic_write_json(args.out / "figures" / "wallclock.json", panels)
    plot_wallclock(panels, args.out / "figures" / "wallclock.png")
    figs = figures_section(cfg.get("figures", []) + ["wallclock"])
    atomic_write_text(args.out / "figures" / "index.md", f"# Figures (scale `{cfg['scale']}`)\n\n" + figs)
    atomic_write_text(args.out / "tables.md", f"# Results tables (scale `{cfg['scale']}`)\n\n" + "\n".join(parts)
                      + "\n## Figures\n\n" + figs.replace("](", "](figures/"))
    atomic_write_json(args.out / "metrics.json", summary(metrics))
    print(f"tables written to {args.out} ({len(metrics)} runs with metrics)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
