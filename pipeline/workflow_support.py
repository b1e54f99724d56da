"""What the Snakefile needs from the library, torch-free: the resolved per-run configs on disk.

:func:`sync_configs` writes one JSON per training and per evaluation under ``results/<scale>/config/`` and rewrites a
file only when its content changes.  Those files are the inputs of the train/evaluate rules, so their modification
times carry parameter changes to Snakemake: a job is stale exactly when the parameters that reach it change, whichever
tool (Snakemake itself, or DVC calling it) edited params.yaml.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline.config import EXTERNAL, MODEL_DATASETS, Params
from pipeline.runconfig import eval_configs, train_configs
from pipeline.utils.io import atomic_write_text

__all__ = ["write_if_changed", "sync_configs", "tables_config", "figures_config"]


def write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text() == text:
        return False
    atomic_write_text(path, text)
    return True


def figures_config(p: Params) -> dict:
    """What the figures stage needs: each configured figure's runs and sizes at this scale (smoke uses Fig. 5's
    smaller runs).  ``figures`` lists the figures drawn."""
    f, s = p.figures, p.scale_config
    out: dict = {"scale": p.scale, "device": p.device, "threads": p.threads, "figures": f.names()}
    if f.fig2 is not None:
        out["fig2"] = dict(f.fig2)
    if f.fig4 is not None:
        out["fig4"] = {"run": f.fig4["run"], "k": f.fig4["k"], "population": s.figure_images}
    if f.fig5 is not None:
        out["fig5"] = {"runs": list(f.fig5["smoke_runs"] if p.scale == "smoke" else f.fig5["runs"]),
                       "eps_factors": list(f.fig5["eps_factors"]), "images": s.figure_images}
    if f.fig7 is not None:
        out["fig7"] = [{"run": rid, "alpha": p.runs[rid].overrides["alpha"]} for rid in f.fig7]
    return out


def tables_config(p: Params, implemented: list[str]) -> dict:
    """Everything the tables stage needs besides the metrics files."""
    return {"scale": p.scale, "tables": p.tables, "implemented_methods": sorted(implemented),
            "time_budget_s": p.scale_config.time_budget_s, "memory_cap_gib": p.memory_cap_gib,
            "figures": p.figures.names(),
            "runs": {rid: {"method": r.method, "model": r.model, "eps": r.eps, "eps_text": r.eps_text,
                           "dataset": MODEL_DATASETS[r.model], "overrides": r.overrides}
                     for rid, r in p.runs.items()}}


def sync_configs(p: Params, implemented: list[str]) -> tuple[list[str], list[str]]:
    """Write the per-run configs of the grid; return (train ids, run ids) whose method is implemented."""
    base = p.results_dir() / "config"
    trains = {tid: c for tid, c in train_configs(p).items() if c.method in implemented}
    evals = {rid: c for rid, c in eval_configs(p).items() if c.method in implemented or c.method == EXTERNAL}
    for tid, c in trains.items():
        write_if_changed(base / "train" / f"{tid}.json", c.to_json())
    for rid, c in evals.items():
        write_if_changed(base / "eval" / f"{rid}.json", c.to_json())
    write_if_changed(base / "figures.json", json.dumps(figures_config(p), indent=1, sort_keys=True) + "\n")
    write_if_changed(base / "tables.json", json.dumps(tables_config(p, implemented), indent=1, sort_keys=True) + "\n")
    return sorted(trains), sorted(evals)
