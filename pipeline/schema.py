"""Small validators shared by the params.yaml parsers: each raises :class:`~pipeline.errors.ConfigError` naming the
key and what was expected.  Torch-free."""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from pipeline.errors import ConfigError

# Underscore names on purpose: module-private helpers of the params parsers (config, evalparams, clusterparams), not
# part of the library's API.
__all__: list[str] = []


def _req(d: dict, key: str, where: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    if key not in d:
        raise ConfigError(f"{where}.{key}: missing (required)")
    return d[key]


def _check_keys(d: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(d) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {extra}; expected only {sorted(allowed)}")


def _num(v: Any, where: str, lo: float | None = None, hi: float | None = None, integer: bool = False,
         allow_none: bool = False) -> Any:
    if v is None and allow_none:
        return None
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok:
        raise ConfigError(f"{where}: expected {'an integer' if integer else 'a number'}"
                          f"{' or null' if allow_none else ''}, got {v!r}")
    if not math.isfinite(v):
        raise ConfigError(f"{where}: expected a finite number, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ConfigError(f"{where}: {v!r} out of range [{lo}, {hi}]")
    return v


def _dc(cls: type, d: Any, where: str) -> Any:
    """Build dataclass ``cls`` from mapping ``d``: every field required, no unknown keys, types checked."""
    names = {f.name for f in fields(cls)}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {d!r}")
    _check_keys(d, names, where)
    kwargs = {}
    for f in fields(cls):
        v = _req(d, f.name, where)
        t = str(f.type)
        if "bool" in t:
            if not isinstance(v, bool):
                raise ConfigError(f"{where}.{f.name}: expected true/false, got {v!r}")
        elif t.startswith("int"):
            v = _num(v, f"{where}.{f.name}", lo=0, integer=True, allow_none="None" in t)
        elif t.startswith("float"):
            v = float(_num(v, f"{where}.{f.name}", lo=0))
        elif t.startswith("str") and not isinstance(v, str):
            raise ConfigError(f"{where}.{f.name}: expected a string, got {v!r}")
        kwargs[f.name] = v
    return cls(**kwargs)
