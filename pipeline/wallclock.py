"""Validation VRA against training wall-clock minutes: MixTrain, MixTrain+ and the best certified baseline.

Drawn by the tables stage from the runs' training histories (``val_vra`` and ``wall_time_s`` after each epoch, as
:mod:`pipeline.train.trainer` records them; older histories without ``wall_time_s`` fall back to ``train_time_s``).
One panel per (model, ε) that has a MixTrain+ run; the baseline shown is the certified-training run (Wong, DiffAI,
MixTrain with other settings) of that model and ε with the highest final validation VRA.  Validation VRA is measured
on the first ``val_vra_images`` validation images (not the test images).
"""
from __future__ import annotations

from typing import Any

from pipeline.figures import _save, plot_note

__all__ = ["wallclock_data", "plot_wallclock", "CERTIFIED_BASELINES"]

#: methods whose rows can be "the best baseline" of the figure (certified training other than MixTrain k=1)
CERTIFIED_BASELINES = ("wong", "diffai", "mixtrain")


def _curve(m: dict) -> list[tuple[float, float]]:
    hist = (m.get("train") or {}).get("history") or []
    return [((h.get("wall_time_s") if h.get("wall_time_s") is not None else h["train_time_s"]) / 60, h["val_vra"])
            for h in hist if h.get("val_vra") is not None]


def wallclock_data(runs: dict[str, dict], metrics: dict[str, dict]) -> dict[str, Any]:
    """``runs``: run id -> {method, model, eps_text, overrides} (the tables config); ``metrics``: run id -> its
    metrics.json.  Returns {panel "model ε": {label: {"run": id, "minutes": [...], "val_vra": [...]}}}."""
    panels: dict[str, dict] = {}
    for rid, run in sorted(runs.items()):
        if run["method"] != "mixtrain_plus" or not _curve(metrics.get(rid, {})):
            continue
        peers = {r: s for r, s in runs.items() if s["model"] == run["model"] and s["eps_text"] == run["eps_text"]
                 and _curve(metrics.get(r, {}))}
        chosen = {"MixTrain+ (this project)": rid}
        plain = [r for r, s in peers.items() if s["method"] == "mixtrain" and not s.get("overrides")]
        if plain:
            chosen["MixTrain (paper's algorithm)"] = plain[0]
        others = [r for r, s in peers.items() if s["method"] in CERTIFIED_BASELINES and r not in chosen.values()]
        if others:
            best = max(others, key=lambda r: _curve(metrics[r])[-1][1])
            chosen[f"best baseline: {best.rsplit('-' + run['model'], 1)[0]}"] = best
        panels[f"{run['model']} ε={run['eps_text']}"] = {
            label: {"run": r, "minutes": [p[0] for p in _curve(metrics[r])],
                    "val_vra": [p[1] for p in _curve(metrics[r])]} for label, r in chosen.items()}
    return panels


def plot_wallclock(panels: dict[str, Any], path) -> None:
    if not panels:
        plot_note("No MixTrain+ run with a validation-VRA history in this grid", path)
        return
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels.items()):
        for label, c in curves.items():
            ax.plot(c["minutes"], [100 * v for v in c["val_vra"]], marker="o", ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("training wall-clock (min)")
        ax.set_ylabel("validation VRA (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
