"""What the Snakefile needs from the library: the data hashes and the per-run configs, planned in memory.

:func:`plan_configs` resolves params.yaml (and the data files' hashes, :func:`plan_data`) into one JSON text per
training, per evaluation, and for the figures and the tables, each under a *content-addressed* name
``results/<scale>/config/<kind>/<id>-<sha256 of the text, 16 hex>.json``.  A file's name fixes its content, so a file
is never rewritten with other content: a running job always reads the parameters it was started with, whatever a later
invocation (one refused by Snakemake's lock included) writes.

:func:`sync_configs` (called while the Snakefile is parsed, never for a dry run) writes the planned files that are
missing: created now, they are newer than the outputs of the jobs that read them, so those jobs rerun — exactly when a
parameter or a data file that reaches them changed, whichever tool edited params.yaml, with no help from Snakemake's
metadata (a clone pulled from a DVC remote has none).  Returning to earlier parameters finds the earlier file in place;
the outputs record which config file they were made from (``config_file``), and a planned file that differs from the
record is rewritten (same content, new time) so that its jobs rerun.  A dry run writes nothing: the ``config`` rule
plans the missing files (:func:`write_config`), and Snakemake's metadata shows which jobs they reach.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import EPS_FREE_METHODS, EXTERNAL, MODEL_DATASETS, Params
from pipeline.data.manifest import current_hashes, manifest_path
from pipeline.errors import ConfigError
from pipeline.paper import DEFAULT_PATH as PAPER_NUMBERS
from pipeline.runconfig import TrainConfig, eval_configs, train_configs
from pipeline.utils.io import atomic_write_text

__all__ = ["ConfigPlan", "plan_configs", "plan_data", "data_manifests", "sync_configs", "write_config",
           "write_configs", "tables_config", "figures_config", "time_limited_trains", "CONFIG_NAME_RE"]

#: ``<id>-<16 hex>.json``: the name of a content-addressed config file (the hex: sha256 of its text)
CONFIG_NAME_RE = re.compile(r"(?P<id>[A-Za-z0-9_.\-]+)-(?P<digest>[0-9a-f]{16})\.json")


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _dumps(obj: dict) -> str:
    return json.dumps(obj, indent=1, sort_keys=True) + "\n"


@dataclass(frozen=True)
class ConfigPlan:
    """Every config file of a grid: repo-relative path -> text, and which path each job reads."""
    files: dict[str, str]
    train: dict[str, str]   # train id -> path
    eval: dict[str, str]    # run id -> path
    tables: str
    figures: str
    #: config path -> the output files that record the config file they were made from (``config_file``); ``None``:
    #: its outputs keep no record (the tables), so the newest version of the config is taken as the one last used
    records: dict[str, list[str] | None]

    def text(self, path: str) -> str:
        try:
            return self.files[path]
        except KeyError:
            raise ConfigError(f"{path}: not a config file of the current params.yaml grid") from None


def plan_data(p: Params, implemented: list[str], data_dir: Path | str) -> dict[str, dict[str, str]]:
    """``"<dataset>-<split>"`` -> that split's file hashes (path under data_root -> sha256), for each split the grid
    reads, from the files' content now; ``data_dir`` holds earlier manifests, whose hashes are reused while the files'
    stamps are unchanged (:func:`pipeline.data.manifest.current_hashes`)."""
    need = set()
    for r in p.runs.values():
        if r.method == EXTERNAL or r.method in implemented:
            need.add((r.dataset, "test"))
        if r.method != EXTERNAL and r.method in implemented:
            need.add((r.dataset, "train"))
    return {f"{ds}-{split}": current_hashes(p.data_root, ds, split, data_dir) for ds, split in sorted(need)}


def data_manifests(p: Params, data: dict[str, dict[str, str]]) -> dict[str, str]:
    """``"<dataset>-<split>"`` -> its content-addressed manifest, ``results/<scale>/data/<dataset>-<split>-<digest>.json``."""
    return {key: f"results/{p.scale}/data/" + manifest_path(".", *key.split("-"), hashes).name
            for key, hashes in data.items()}


def figures_config(p: Params, train: dict[str, str] | None = None, evals: dict[str, str] | None = None) -> dict:
    """What the figures stage needs: each configured figure's runs and sizes at this scale (smoke uses Fig. 5's
    smaller runs) and, given the planned config files, the config file of every run it reads (``configs``).
    ``figures`` lists the figures drawn."""
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
    if train is not None and evals is not None:
        for name in ("fig2", "fig4", "fig5"):
            if name in out:
                rids = out[name]["runs"] if name == "fig5" else [out[name]["run"]]
                out[name]["configs"] = {
                    "eval": {rid: evals[rid] for rid in rids if rid in evals},
                    "train": {p.runs[rid].train_id: train[p.runs[rid].train_id] for rid in rids
                              if p.runs[rid].train_id in train}}
    return out


def tables_config(p: Params, implemented: list[str]) -> dict:
    """Everything the tables stage needs besides the metrics files: per run its identity and the training schedule
    its train config carries (the tables' headers state it), and the paper-numbers file's sha256 (an edit of the
    paper's numbers changes this config, so Snakemake re-renders the tables)."""
    def schedule(c: TrainConfig | None) -> dict | None:  # epochs, batch, ε ramp, optimiser and its decay
        if c is None:
            return None
        s, o = c.schedule, c.optim
        return {"epochs": s["epochs"], "batch_size": s["batch_size"], "batches_per_epoch": s.get("batches_per_epoch"),
                "eps_ramp_epochs": s["eps_ramp_epochs"], "eps_start": c.eps_start,
                "eps_free": c.method in EPS_FREE_METHODS, "optimizer": o["name"], "lr": o["lr"],
                "lr_decay_every": s["lr_decay_every"],
                "lr_decay_factor": s.get("lr_decay_factor", o["decay_factor"]),
                **({"time_limit_min": s["time_limit_min"]} if s.get("time_limit_min") is not None else {})}

    trains = train_configs(p)
    return {"scale": p.scale, "tables": p.tables, "implemented_methods": sorted(implemented),
            "time_budget_s": p.scale_config.time_budget_s, "memory_cap_gib": p.memory_cap_gib,
            "figures": p.figures.names(),
            "paper_numbers_sha256": hashlib.sha256(PAPER_NUMBERS.read_bytes()).hexdigest(),
            "runs": {rid: {"method": r.method, "model": r.model, "eps": r.eps, "eps_text": r.eps_text,
                           "dataset": MODEL_DATASETS[r.model], "overrides": r.overrides,
                           "train": schedule(trains.get(r.train_id))}
                     for rid, r in p.runs.items()}}


def time_limited_trains(p: Params) -> frozenset[str]:
    """The training ids whose schedule has a wall-time limit (``time_limit_min``): their result depends on the compute
    they get per minute, so the workflow gives each the whole machine (workflow/rules/pipeline.smk, rule train)."""
    return frozenset(tid for tid, c in train_configs(p).items() if c.schedule.get("time_limit_min") is not None)


def plan_configs(p: Params, implemented: list[str], data: dict[str, dict[str, str]] | None = None) -> ConfigPlan:
    """The grid's config files (nothing written), for the runs whose method is implemented (and external runs);
    ``data`` (:func:`plan_data`) is carried into the per-run configs, so changed data changes their names."""
    base = f"results/{p.scale}/config"
    files: dict[str, str] = {}
    records: dict[str, list[str]] = {}

    def add(kind: str, name: str, text: str, recorded_in: list[str] | None) -> str:
        path = f"{base}/{kind}/{name}-{_text_digest(text)}.json"
        files[path], records[path] = text, recorded_in
        return path

    res, reports = f"results/{p.scale}", f"reports/{p.scale}"
    train = {tid: add("train", tid, c.to_json(), [f"{res}/train/{tid}/train.json"])
             for tid, c in sorted(train_configs(p, data).items()) if c.method in implemented}
    evals = {rid: add("eval", rid, c.to_json(), [f"{res}/eval/{rid}/metrics.json"])
             for rid, c in sorted(eval_configs(p, data).items()) if c.method in implemented or c.method == EXTERNAL}
    figures = add("figures", "figures", _dumps(figures_config(p, train, evals)),
                  [f"{reports}/figures/{f}.json" for f in p.figures.names()])
    tables = add("tables", "tables", _dumps(tables_config(p, implemented)), None)
    return ConfigPlan(files, train, evals, tables, figures, records)


def _check_name(path: Path, text: str) -> re.Match:
    m = CONFIG_NAME_RE.fullmatch(path.name)
    if m is None or m["digest"] != _text_digest(text):
        raise ConfigError(f"{path}: a config file's name must end in the sha256 of its content "
                          f"({_text_digest(text)})")
    return m


def write_config(path: Path | str, text: str) -> None:
    """Write one planned config file, atomically (the ``config`` job; the name must carry the text's digest)."""
    _check_name(Path(path), text)
    atomic_write_text(path, text)


def _made_from_another(target: Path, records: list[Path] | None) -> bool:
    """Whether the outputs reading ``target``'s config were made from another version of it: their record names
    another file, or (outputs without a record) another version of the same id is newer than ``target``.  No outputs:
    no (their jobs run anyway)."""
    recorded = []
    for r in records or []:
        try:
            recorded.append(json.loads(r.read_text()).get("config_file"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, AttributeError):
            recorded.append(None)
    if records is not None and not recorded:
        return False
    if recorded and all(isinstance(n, str) for n in recorded):
        return any(n != target.name for n in recorded)
    m = CONFIG_NAME_RE.fullmatch(target.name)
    mtime = target.stat().st_mtime_ns
    return any(o.stat().st_mtime_ns > mtime for o in target.parent.glob(f"{m['id']}-*.json")
               if o != target and (x := CONFIG_NAME_RE.fullmatch(o.name)) is not None and x["id"] == m["id"])


def sync_configs(plan: ConfigPlan, root: Path | str) -> list[str]:
    """Make the planned config files current under ``root``: write the missing ones, and rewrite (same content, new
    modification time) those whose jobs' outputs were made from another version.  Returns the paths written.  Never
    changes an existing file's content and never deletes one, so a job that is running elsewhere is unaffected."""
    written = []
    for path, text in plan.files.items():
        target = Path(root) / path
        _check_name(target, text)
        records = plan.records[path]
        if not target.is_file() or _made_from_another(target, None if records is None else
                                                      [Path(root) / r for r in records]):
            atomic_write_text(target, text)
            written.append(path)
    return written


def write_configs(p: Params, implemented: list[str], root: Path | str = ".") -> ConfigPlan:
    """Plan (with the data files' current hashes) and write every config file under ``root`` (for running stages by
    hand, outside the workflow)."""
    data = plan_data(p, implemented, Path(root) / "results" / p.scale / "data")
    plan = plan_configs(p, implemented, data)
    sync_configs(plan, root)
    return plan
