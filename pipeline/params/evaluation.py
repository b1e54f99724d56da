"""params.yaml's evaluation sections -> validated, typed settings: ``attacks``, ``table1`` and ``figures``.

Torch-free (the Snakefile validates with it).  An attack's hyperparameter may be given per dataset
(``{mnist: .., cifar10: ..}``) and a scale may override any of them (``scales.<scale>.attack_overrides``), which is
how the smoke scale caps the interval attack's cost.  Values are checked structurally here; each attack's constructor
checks ranges, and the evaluate stage builds every attack before it loads a model, so a bad value fails before any
work is done.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import ConfigError

__all__ = ["ATTACK_NAMES", "FIGURE_NAMES", "AttackSettings", "Table1Settings", "FigureSettings", "parse_attacks",
           "parse_table1", "parse_figures", "resolve_attack_params", "check_attack_overrides"]

#: the attacks ERA is measured with, in the order they run (registered names in pipeline.attacks)
ATTACK_NAMES = ("pgd", "cw", "interval")
_DATASETS = ("mnist", "cifar10")


@dataclass(frozen=True)
class AttackSettings:
    seed: int
    chunk: int                               # test images per attack call
    params: dict[str, dict[str, Any]]        # attack -> hyperparameters (values maybe per dataset)


@dataclass(frozen=True)
class Table1Settings:
    budget_passes: int | None  # equal budget per attack; None = the interval attack's own measured cost
    images: int | None         # the first this many of the run's test images (None = all of them)


@dataclass(frozen=True)
class FigureSettings:
    """Each figure is optional (``None``: not drawn; a grid without the figure's runs simply omits it)."""
    fig2: dict[str, Any] | None = None   # {run, images, starts}
    fig4: dict[str, Any] | None = None   # {run, k}
    fig5: dict[str, Any] | None = None   # {runs, smoke_runs, eps_factors}
    fig7: list[str] | None = None        # fixed-α MixTrain runs

    def names(self) -> list[str]:
        return [n for n in FIGURE_NAMES if getattr(self, n) is not None]


FIGURE_NAMES = ("fig2", "fig4", "fig5", "fig7")


def _scalar_or_per_dataset(v: Any, where: str) -> None:
    if isinstance(v, dict):
        if set(v) != set(_DATASETS):
            raise ConfigError(f"{where}: a per-dataset value needs exactly the keys {list(_DATASETS)}, got {sorted(v)}")
        for ds in _DATASETS:
            _scalar_or_per_dataset(v[ds], f"{where}.{ds}")
    elif not isinstance(v, (int, float, bool)):
        raise ConfigError(f"{where}: expected a number, true/false or a per-dataset mapping, got {v!r}")


def _int(v: Any, where: str, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{where}: expected an integer >= {lo}, got {v!r}")
    return v


def parse_attacks(raw: Any) -> AttackSettings:
    if not isinstance(raw, dict):
        raise ConfigError(f"attacks: expected a mapping with seed, chunk and {list(ATTACK_NAMES)}, got {raw!r}")
    extra = sorted(set(raw) - {"seed", "chunk", *ATTACK_NAMES})
    if extra:
        raise ConfigError(f"attacks: unknown key(s) {extra}; expected seed, chunk and {list(ATTACK_NAMES)}")
    params = {}
    for name in ATTACK_NAMES:
        p = raw.get(name)
        if not isinstance(p, dict):
            raise ConfigError(f"attacks.{name}: missing or not a mapping of its hyperparameters (got {p!r})")
        for k, v in p.items():
            _scalar_or_per_dataset(v, f"attacks.{name}.{k}")
        params[name] = dict(p)
    return AttackSettings(_int(raw.get("seed"), "attacks.seed", 0), _int(raw.get("chunk"), "attacks.chunk", 1), params)


def check_attack_overrides(overrides: Any, attacks: AttackSettings, where: str) -> None:
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: expected a mapping attack -> {{hyperparameter: value}}, got {overrides!r}")
    for name, p in overrides.items():
        if name not in attacks.params:
            raise ConfigError(f"{where}.{name}: not an attack; expected one of {list(ATTACK_NAMES)}")
        if not isinstance(p, dict):
            raise ConfigError(f"{where}.{name}: expected a mapping of hyperparameters, got {p!r}")
        for k, v in p.items():
            if k not in attacks.params[name]:
                raise ConfigError(f"{where}.{name}.{k}: not a hyperparameter of attacks.{name} "
                                  f"({sorted(attacks.params[name])})")
            _scalar_or_per_dataset(v, f"{where}.{name}.{k}")


def resolve_attack_params(attacks: AttackSettings, overrides: dict[str, dict[str, Any]],
                          dataset: str) -> dict[str, dict[str, Any]]:
    """Each attack's constructor keyword arguments for ``dataset``, with the scale's overrides applied."""
    def pick(v: Any) -> Any:
        return v[dataset] if isinstance(v, dict) else v
    return {name: {k: pick(v) for k, v in {**p, **overrides.get(name, {})}.items()}
            for name, p in attacks.params.items()}


def parse_table1(raw: Any) -> Table1Settings:
    if not isinstance(raw, dict) or set(raw) != {"budget_passes", "images"}:
        raise ConfigError(f"table1: expected {{budget_passes: <integer or null>, images: <integer or null>}}, "
                          f"got {raw!r}")
    b, n = raw["budget_passes"], raw["images"]
    return Table1Settings(None if b is None else _int(b, "table1.budget_passes", 1),
                          None if n is None else _int(n, "table1.images", 1))


def parse_figures(raw: Any, runs: dict[str, Any]) -> FigureSettings:
    if raw is None:
        return FigureSettings()
    if not isinstance(raw, dict) or not set(raw) <= set(FIGURE_NAMES):
        raise ConfigError(f"figures: expected a mapping with any of the keys {list(FIGURE_NAMES)}, got "
                          f"{raw if not isinstance(raw, dict) else sorted(raw)}")

    def run(rid: Any, where: str, method: str | None = None) -> str:
        if rid not in runs:
            raise ConfigError(f"{where}: {rid!r} is not a run defined under 'runs'")
        if method and runs[rid].method != method:
            raise ConfigError(f"{where}: {rid!r} is a {runs[rid].method} run; expected a {method} run")
        return rid

    shapes = {"fig2": {"run", "images", "starts"}, "fig4": {"run", "k"}, "fig5": {"runs", "smoke_runs", "eps_factors"}}
    for name, keys in shapes.items():
        d = raw.get(name)
        if name in raw and (not isinstance(d, dict) or set(d) != keys):
            raise ConfigError(f"figures.{name}: expected the keys {sorted(keys)}, got {d!r}")
    if "fig2" in raw:
        run(raw["fig2"]["run"], "figures.fig2.run")
        _int(raw["fig2"]["images"], "figures.fig2.images", 1)
        _int(raw["fig2"]["starts"], "figures.fig2.starts", 1)
    if "fig4" in raw:
        run(raw["fig4"]["run"], "figures.fig4.run", "mixtrain")
        _int(raw["fig4"]["k"], "figures.fig4.k", 1)
    if "fig5" in raw:
        f5 = raw["fig5"]
        for key in ("runs", "smoke_runs"):
            if not isinstance(f5[key], list) or not f5[key]:
                raise ConfigError(f"figures.fig5.{key}: expected a non-empty list of run ids")
            for i, rid in enumerate(f5[key]):
                run(rid, f"figures.fig5.{key}[{i}]")
        facs = f5["eps_factors"]
        if not isinstance(facs, list) or not facs or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                                         or v < 0 for v in facs):
            raise ConfigError(f"figures.fig5.eps_factors: expected a non-empty list of numbers >= 0, got {facs!r}")
    if "fig7" in raw:
        f7 = raw["fig7"]
        if not isinstance(f7, list) or len(f7) < 2:
            raise ConfigError("figures.fig7: expected a list of at least two fixed-α MixTrain runs")
        for i, rid in enumerate(f7):
            run(rid, f"figures.fig7[{i}]", "mixtrain")
            if not isinstance(runs[rid].overrides.get("alpha"), (int, float)):
                raise ConfigError(f"figures.fig7[{i}]: {rid!r} does not fix α (overrides.alpha)")
    return FigureSettings(**{k: (list(v) if isinstance(v, list) else dict(v)) for k, v in raw.items()})
