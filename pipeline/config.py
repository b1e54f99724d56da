"""params.yaml -> validated, typed configuration and the run grid.

Each section has its parser in :mod:`pipeline.params` (scales and training settings, attacks/tables/figures, the
cluster, the shared validators); this module reads the file, parses the rest (data, models, methods, runs) and
assembles :class:`Params`.  Library code only ever sees the dataclasses built here and in :mod:`pipeline.runconfig`
(never argparse or Snakemake).  :func:`load_params` validates everything once and raises :class:`~pipeline.errors.ConfigError` naming
the key.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.params.cluster import ClusterConfig, JobResources, parse_cluster
from pipeline.params.evaluation import (AttackSettings, FigureSettings, Table1Settings, check_attack_overrides,
                                        parse_attacks, parse_figures, parse_table1)
from pipeline.params.schema import _check_keys, _dc, _num, _req, read_yaml
from pipeline.params.training import OptimConfig, ScaleConfig, VerifyConfig, check_val_size, parse_scales

__all__ = ["ScaleConfig", "OptimConfig", "ModelConfig", "VerifyConfig", "JobResources", "ClusterConfig", "RunSpec",
           "Params", "load_params",
           "params_from_dict", "parse_eps", "canonical_run_id", "MODEL_DATASETS", "EXTERNAL", "DATASETS", "TABLE_NAMES"]

#: zoo model -> dataset (kept here, torch-free, so the workflow can validate without importing torch)
MODEL_DATASETS = {"MNIST_FC1": "mnist", "MNIST_FC2": "mnist", "MNIST_Small": "mnist", "MNIST_Large": "mnist",
                  "CIFAR_Small": "cifar10", "CIFAR_Large": "cifar10", "CIFAR_Resnet": "cifar10", "CNN7": "cifar10"}
KNOWN_DOMAINS = ("interval", "symbolic_interval", "symbolic_linear", "backward", "backward_crown", "backward_ibp",
                 "hybrid_zonotope")
#: method -> top-level parameters it follows unless a run overrides them
FOLLOWS_TOP_LEVEL = {"mixtrain": ("k",)}
#: methods whose training does not depend on ε (one trained model serves every ε row)
EPS_FREE_METHODS = ("natural", "sinha")  # methods whose training ignores ε (Method.uses_eps False)
#: the pseudo-method of runs that evaluate a published checkpoint instead of training
EXTERNAL = "external"
DATASETS = ("mnist", "cifar10")
#: the paper's tables this pipeline renders (params.yaml ``tables`` may list runs for any of them)
TABLE_NAMES = ("table1", "table3", "table4", "table5", "table6", "table7", "table8")


@dataclass(frozen=True)
class ModelConfig:
    vra_domains: tuple[str, ...]
    large: bool


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    method: str
    model: str
    eps_text: str
    eps: float
    overrides: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None  # external runs: {path, mean, std}

    @property
    def dataset(self) -> str:
        return MODEL_DATASETS[self.model]

    @property
    def train_id(self) -> str:
        if self.method in EPS_FREE_METHODS:
            return self.run_id.rsplit("-eps", 1)[0]
        return self.run_id


def parse_eps(v: Any, where: str) -> tuple[float, str]:
    """ε in pixel space: a number or a fraction string such as ``"2/255"`` -> (value, id tag)."""
    if isinstance(v, str) and re.fullmatch(r"\d+/\d+", v.strip()):
        frac = Fraction(v.strip())
        value, tag = float(frac), f"{frac.numerator}_{frac.denominator}"
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        value, tag = float(v), f"{v}"
    else:
        raise ConfigError(f"{where}: expected a number or a fraction like '2/255', got {v!r}")
    if not 0 <= value <= 1:
        raise ConfigError(f"{where}: ε={v!r} must lie in [0, 1] (pixel space)")
    return value, tag


def canonical_run_id(method: str, model: str, eps_tag: str, overrides: dict[str, Any]) -> str:
    suffix = "".join(f"-{k}{overrides[k]}" for k in sorted(overrides))
    return f"{method}{suffix}-{model}-eps{eps_tag}"


@dataclass(frozen=True)
class Params:
    root: Path
    scale: str
    data_root: Path
    seed: int
    k: int
    device: str
    threads: int
    memory_cap_gib: float | None
    val_size: int
    split_seed: int
    pin_memory: bool        # data.pin_memory: page-locked host batches on CUDA (no effect on CPU or on results)
    prefetch_batches: int   # data.prefetch_batches: batches made ahead on a background thread (0 = synchronous)
    mixed_precision: bool   # bfloat16 autocast for natural forwards and attack generation only, never for bounds
    compile_bounds: bool    # training's bound kernels compiled (pipeline.bounds.kernels); verification never
    verify: VerifyConfig
    scales: dict[str, ScaleConfig]
    optim: dict[str, OptimConfig]
    eps_start: dict[str, float]
    models: dict[str, ModelConfig]
    methods: dict[str, dict[str, Any]]
    runs: dict[str, RunSpec]
    tables: dict[str, list[str]]
    cluster: ClusterConfig
    attacks: AttackSettings
    table1: Table1Settings
    figures: FigureSettings

    @property
    def scale_config(self) -> ScaleConfig:
        return self.scales[self.scale]

    def results_dir(self) -> Path:
        return self.root / "results" / self.scale

    def method_params(self, run: RunSpec) -> dict[str, Any]:
        # A hyperparameter given per dataset ({mnist: .., cifar10: ..}) resolves to the run's dataset's value, so a
        # CIFAR-only change never touches MNIST runs.
        resolved = {k: (v[run.dataset] if isinstance(v, dict) and set(v) == set(DATASETS) else v)
                    for k, v in self.methods[run.method].items()}
        for key in FOLLOWS_TOP_LEVEL.get(run.method, ()):
            resolved[key] = getattr(self, key)
        resolved.update(run.overrides)
        return resolved


TOP_KEYS = {"scale", "data_root", "seed", "k", "device", "threads", "memory_cap_gib", "mixed_precision",
            "compile_bounds", "data",
            "verify", "scales", "optim", "eps_start", "external_checkpoint_dirs",
            "models", "methods", "runs", "tables", "cluster", "attacks", "table1", "figures"}


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: expected true or false, got {v!r}")
    return v


def _check_mixtrain(m: dict[str, Any]) -> None:
    """MixTrain's hyperparameters, checked here so a typo fails before any stage runs."""
    where = "methods.mixtrain"
    _check_keys(m, {"domain", "alpha", "alpha_rule"}, where)
    if _req(m, "domain", where) not in KNOWN_DOMAINS:
        raise ConfigError(f"{where}.domain: {m['domain']!r} is not a bound domain; expected one of "
                          f"{list(KNOWN_DOMAINS)}")
    alpha = _req(m, "alpha", where)
    if alpha != "adaptive":
        _num(alpha, f"{where}.alpha (a number in [0, 1] or 'adaptive')", lo=0, hi=1)
    rules = _req(m, "alpha_rule", where)
    for ds in DATASETS:
        rule = _req(rules, ds, f"{where}.alpha_rule")
        w = f"{where}.alpha_rule.{ds}"
        _check_keys(rule, {"kind", "start", "step", "max", "min", "every", "target_acc"}, w)
        if _req(rule, "kind", w) not in ("constant", "staircase", "cifar"):
            raise ConfigError(f"{w}.kind: expected constant, staircase or cifar, got {rule['kind']!r}")
        for key in ("start", "step", "max", "min", "target_acc"):
            if key in rule:
                _num(rule[key], f"{w}.{key}", lo=0, hi=1)
        if "every" in rule:
            _num(rule["every"], f"{w}.every", lo=1, integer=True)


def _checkpoint_path(v: Any, where: str, root: Path, allowed: tuple[Path, ...]) -> Path:
    """An external checkpoint's path, confined to the repository or a directory of ``external_checkpoint_dirs``
    (symbolic links resolved, so neither ``..`` nor a link can reach elsewhere)."""
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{where}: expected a path (relative to the repository) to a checkpoint file, got {v!r}")
    path = Path(v)
    path = (path if path.is_absolute() else root / path).resolve()
    roots = (root.resolve(), *allowed)
    if not any(path.is_relative_to(r) for r in roots):
        raise ConfigError(f"{where}: {v!r} resolves to {path}, outside the repository ({roots[0]}) and every "
                          f"directory of external_checkpoint_dirs ({[str(r) for r in allowed]}); copy the checkpoint "
                          "into the repository or add its directory to external_checkpoint_dirs")
    return path


def _checkpoint_dirs(raw: Any, root: Path) -> tuple[Path, ...]:
    where = "external_checkpoint_dirs"
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(d, str) and d.strip() for d in raw):
        raise ConfigError(f"{where}: expected a list of directories that may hold external checkpoints, got {raw!r}")
    dirs = tuple(((root / d) if not Path(d).is_absolute() else Path(d)).resolve() for d in raw)
    for d, text in zip(dirs, raw):
        if not d.is_dir():
            raise ConfigError(f"{where}: {text!r} ({d}) is not a directory")
    return dirs


def _external_run(rid: str, spec: dict, model: str, models: dict, root: Path, allowed: tuple[Path, ...]) -> RunSpec:
    where = f"runs.{rid}"
    if model not in models:
        raise ConfigError(f"{where}.model: {model!r} is not a model in 'models' ({sorted(models)})")
    eps, tag = parse_eps(_req(spec, "eps", where), f"{where}.eps")
    ck = _req(spec, "checkpoint", where)
    _check_keys(ck, {"path", "mean", "std", "stage"}, f"{where}.checkpoint")
    path = _checkpoint_path(_req(ck, "path", f"{where}.checkpoint"), f"{where}.checkpoint.path", root, allowed)
    channels = 1 if MODEL_DATASETS[model] == "mnist" else 3
    for key in ("mean", "std"):
        v = _req(ck, key, f"{where}.checkpoint")
        if not isinstance(v, list) or len(v) != channels or not all(isinstance(t, (int, float)) for t in v) \
                or (key == "std" and any(t <= 0 for t in v)):
            raise ConfigError(f"{where}.checkpoint.{key}: expected a list of {channels} numbers"
                              f"{' > 0' if key == 'std' else ''}, got {v!r}")
    stage = ck.get("stage")
    if stage is not None:
        _num(stage, f"{where}.checkpoint.stage (the index of one model of a cascade checkpoint)", lo=0, integer=True)
    expected = f"{EXTERNAL}-{path.stem}{'' if stage is None else f'-stage{stage}'}-{model}-eps{tag}"
    if rid != expected:
        raise ConfigError(f"{where}: run id must name the checkpoint, its stage if any, the model and ε; "
                          f"expected {expected!r}")
    if spec.get("overrides"):
        raise ConfigError(f"{where}.overrides: external runs take no overrides")
    return RunSpec(rid, EXTERNAL, model, str(spec["eps"]), eps, {},
                   {"path": str(path), "mean": list(ck["mean"]), "std": list(ck["std"]),
                    **({} if stage is None else {"stage": stage})})


def _runs(raw: Any, methods: dict, models: dict, root: Path, ck_dirs: tuple[Path, ...]) -> dict[str, RunSpec]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("runs: expected a non-empty mapping of run id -> {method, model, eps, overrides}")
    out = {}
    for rid, spec in raw.items():
        where = f"runs.{rid}"
        _check_keys(spec if isinstance(spec, dict) else {}, {"method", "model", "eps", "overrides", "checkpoint"},
                    where)
        method, model = _req(spec, "method", where), _req(spec, "model", where)
        if method == EXTERNAL:
            out[rid] = _external_run(rid, spec, model, models, root, ck_dirs)
            continue
        if "checkpoint" in spec:
            raise ConfigError(f"{where}.checkpoint: only runs with method '{EXTERNAL}' take a checkpoint")
        if method not in methods:
            raise ConfigError(f"{where}.method: {method!r} is not a method in 'methods' ({sorted(methods)})")
        if model not in models:
            raise ConfigError(f"{where}.model: {model!r} is not a model in 'models' ({sorted(models)})")
        eps, tag = parse_eps(_req(spec, "eps", where), f"{where}.eps")
        overrides = spec.get("overrides") or {}
        allowed = set(methods[method]) | set(FOLLOWS_TOP_LEVEL.get(method, ()))
        _check_keys(overrides, allowed, f"{where}.overrides")
        if "k" in overrides:
            _num(overrides["k"], f"{where}.overrides.k", lo=1, integer=True)
        if "alpha" in overrides and overrides["alpha"] != "adaptive":
            _num(overrides["alpha"], f"{where}.overrides.alpha", lo=0, hi=1)
        expected = canonical_run_id(method, model, tag, overrides)
        if rid != expected:
            raise ConfigError(f"{where}: run id must name every value that changes its outputs; expected {expected!r}")
        out[rid] = RunSpec(rid, method, model, str(spec["eps"]), eps, dict(overrides))
    return out


def _scale_subset(sc: ScaleConfig, scale: str, runs: dict[str, RunSpec], tables: dict[str, list[str]],
                  figures: FigureSettings) -> tuple[dict[str, RunSpec], dict[str, list[str]], FigureSettings]:
    """The grid a scale builds: its ``runs`` list (null = all), each table keeping the rows of those runs and each
    figure kept only when all its runs are built; ``schedule_overrides`` keys checked against methods and runs."""
    where = f"scales.{scale}"
    for key in (sc.schedule_overrides or {}):
        if key not in runs and key not in {r.method for r in runs.values()}:
            raise ConfigError(f"{where}.schedule_overrides.{key}: expected a method of the grid or a run id defined "
                              "under 'runs'")
        if key in runs and runs[key].method in EPS_FREE_METHODS:
            raise ConfigError(f"{where}.schedule_overrides.{key}: {runs[key].method} trains one model for every ε "
                              f"row; override its schedule under the method name {runs[key].method!r}")
    if sc.runs is None:
        return runs, tables, figures
    unknown = [r for r in sc.runs if r not in runs]
    if unknown:
        raise ConfigError(f"{where}.runs: {unknown} not defined under 'runs'")
    keep = {rid: runs[rid] for rid in runs if rid in set(sc.runs)}
    fig_runs = {"fig2": lambda f: [f["run"]], "fig4": lambda f: [f["run"]],
                "fig5": lambda f: f["smoke_runs"] if scale == "smoke" else f["runs"], "fig7": lambda f: f}
    kept = {name: (getattr(figures, name) if all(r in keep for r in fig_runs[name](getattr(figures, name))) else None)
            for name in figures.names()}
    return keep, {t: [r for r in rows if r in keep] for t, rows in tables.items()}, replace(FigureSettings(), **kept)


def params_from_dict(raw: dict[str, Any], root: Path) -> Params:
    """Validate a params mapping (as loaded from params.yaml, with overrides applied)."""
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml: expected a mapping at the top level")
    _check_keys(raw, TOP_KEYS, "params.yaml")
    scales = parse_scales(_req(raw, "scales", "params"))
    scale = _req(raw, "scale", "params")
    if scale not in scales:
        raise ConfigError(f"scale: {scale!r} is not defined under 'scales' (have {sorted(scales)})")
    data_root = Path(str(_req(raw, "data_root", "params")))
    data_root = data_root if data_root.is_absolute() else (root / data_root)
    if not data_root.is_dir():
        raise ConfigError(f"data_root: {data_root} is not a directory (expected it to hold mnist/ and "
                          "cifar-10-batches-py/)")
    device = _req(raw, "device", "params")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device: expected auto, cpu or cuda, got {device!r}")
    data = _req(raw, "data", "params")
    _check_keys(data, {"val_size", "split_seed", "pin_memory", "prefetch_batches"}, "data")
    pin_memory = _bool(_req(data, "pin_memory", "data"), "data.pin_memory")
    prefetch_batches = _num(_req(data, "prefetch_batches", "data"), "data.prefetch_batches", lo=0, hi=64,
                            integer=True)
    mixed_precision = _bool(_req(raw, "mixed_precision", "params"), "mixed_precision")
    compile_bounds = _bool(raw.get("compile_bounds", False), "compile_bounds")  # optional: older files lack it
    for key in ("optim", "eps_start"):
        _check_keys(_req(raw, key, "params"), set(DATASETS), key)
        for ds in DATASETS:
            _req(raw[key], ds, key)
    optim = {ds: _dc(OptimConfig, raw["optim"][ds], f"optim.{ds}") for ds in DATASETS}
    eps_start = {ds: parse_eps(raw["eps_start"][ds], f"eps_start.{ds}")[0] for ds in DATASETS}
    models = {}
    for name, m in _req(raw, "models", "params").items():
        if name not in MODEL_DATASETS:
            raise ConfigError(f"models.{name}: unknown model; expected one of {sorted(MODEL_DATASETS)}")
        _check_keys(m, {"vra_domains", "large"}, f"models.{name}")
        doms = _req(m, "vra_domains", f"models.{name}")
        if not isinstance(doms, list) or not doms or any(d not in KNOWN_DOMAINS for d in doms):
            raise ConfigError(f"models.{name}.vra_domains: expected a non-empty list from {list(KNOWN_DOMAINS)}, "
                              f"got {doms!r}")
        models[name] = ModelConfig(tuple(doms), bool(_req(m, "large", f"models.{name}")))
    methods = _req(raw, "methods", "params")
    if not isinstance(methods, dict) or any(not isinstance(v, dict) for v in methods.values()):
        raise ConfigError("methods: expected a mapping of method name -> mapping of its hyperparameters")
    if "mixtrain" in methods:
        _check_mixtrain(methods["mixtrain"])
    runs = _runs(_req(raw, "runs", "params"), methods, models, root,
                 _checkpoint_dirs(raw.get("external_checkpoint_dirs"), root))
    val_size = _num(_req(data, "val_size", "data"), "data.val_size", lo=1, integer=True)
    check_val_size(val_size, scales, {r.dataset for r in runs.values() if r.method != EXTERNAL})
    attacks = parse_attacks(_req(raw, "attacks", "params"))
    for name, sc in scales.items():
        check_attack_overrides(sc.attack_overrides, attacks, f"scales.{name}.attack_overrides")
        check_attack_overrides(sc.table1_attack_overrides, attacks, f"scales.{name}.table1_attack_overrides")
    tables = _req(raw, "tables", "params")
    if not isinstance(tables, dict):
        raise ConfigError(f"tables: expected a mapping of table name -> list of run ids, got {tables!r}")
    unknown = sorted(set(tables) - set(TABLE_NAMES))
    if unknown:
        raise ConfigError(f"tables: unknown table(s) {unknown} (tables.{unknown[0]}); expected some of "
                          f"{list(TABLE_NAMES)}")
    for t, rows in tables.items():
        if not isinstance(rows, list):
            raise ConfigError(f"tables.{t}: expected a list of run ids")
        for r in rows:
            if r not in runs:
                raise ConfigError(f"tables.{t}: run {r!r} is not defined under 'runs'")
    runs, tables, figures = _scale_subset(scales[scale], scale, runs, tables, parse_figures(raw.get("figures"), runs))
    memory_cap_gib = _num(_req(raw, "memory_cap_gib", "params"), "memory_cap_gib", lo=0.001, hi=1e6, allow_none=True)
    if scales[scale].memory_cap_gib is not None:  # the scale's own cap wins (scales.<scale>.memory_cap_gib)
        memory_cap_gib = scales[scale].memory_cap_gib
    return Params(
        root=root, scale=scale, data_root=data_root.resolve(),
        seed=_num(_req(raw, "seed", "params"), "seed", lo=0, hi=2**32 - 1, integer=True),
        k=_num(_req(raw, "k", "params"), "k", lo=1, hi=100000, integer=True), device=device,
        threads=_num(_req(raw, "threads", "params"), "threads", lo=0, hi=4096, integer=True),
        memory_cap_gib=memory_cap_gib,
        val_size=val_size,
        split_seed=_num(_req(data, "split_seed", "data"), "data.split_seed", lo=0, hi=2**32 - 1, integer=True),
        pin_memory=pin_memory, prefetch_batches=prefetch_batches, mixed_precision=mixed_precision,
        compile_bounds=compile_bounds, verify=_dc(VerifyConfig, _req(raw, "verify", "params"), "verify"),
        scales=scales, optim=optim, eps_start=eps_start, models=models, methods=methods, runs=runs, tables=tables,
        cluster=parse_cluster(_req(raw, "cluster", "params")), attacks=attacks,
        table1=parse_table1(_req(raw, "table1", "params")), figures=figures)


def load_params(path: Path | str = "params.yaml", overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate params.yaml; ``overrides`` replace top-level keys (as Snakemake's ``--config`` does, and the
    Snakefile's ``--config`` handling calls this same function)."""
    path = Path(path).resolve()
    raw = read_yaml(path)  # duplicate keys rejected; syntax errors with line and column
    if isinstance(raw, dict) and overrides:
        raw = {**raw, **overrides}
    return params_from_dict(raw, path.parent)
