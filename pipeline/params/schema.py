"""Small validators shared by the params.yaml parsers: each raises :class:`~pipeline.errors.ConfigError` naming the
key and what was expected; and :func:`read_yaml`, the strict reader of params.yaml (duplicate keys rejected, syntax
errors with line and column).  Torch-free."""
from __future__ import annotations

import math
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError

# Underscore names on purpose: helpers private to the params parsers (pipeline.config and pipeline.params), not
# part of the library's API.
__all__ = ["read_yaml"]


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML silently keeps the last value)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        self.flatten_mapping(node)
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given at line {first.start_mark.line + 1}, column "
                                f"{first.start_mark.column + 1}); a key may appear once per mapping", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path | str) -> Any:
    """Parse a YAML file strictly; :class:`ConfigError` with the file, line and column on any error."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"params file not found: {path}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"
        what = " ".join(str(t) for t in (e.context, e.problem) if t)
        raise ConfigError(f"{path}: {where}: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


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
         allow_none: bool = False, bounds: str = "[]") -> Any:
    """A finite number (an integer if ``integer``) in the range from ``lo`` to ``hi``; ``bounds`` says whether each
    end is included (``"[]"``, ``"(]"``, ``"[)"``, ``"()"``)."""
    if v is None and allow_none:
        return None
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok:
        raise ConfigError(f"{where}: expected {'an integer' if integer else 'a number'}"
                          f"{' or null' if allow_none else ''}, got {v!r}")
    if not math.isfinite(v):
        raise ConfigError(f"{where}: expected a finite number, got {v!r}")
    below = lo is not None and (v <= lo if bounds[0] == "(" else v < lo)
    above = hi is not None and (v >= hi if bounds[1] == ")" else v > hi)
    if below or above:
        raise ConfigError(f"{where}: {v!r} out of range {bounds[0]}{lo}, {hi}{bounds[1]}")
    return v


def _dc(cls: type, d: Any, where: str) -> Any:
    """Build dataclass ``cls`` from mapping ``d``: every field without a default required, no unknown keys, types checked, numbers in the
    ranges of ``cls.RANGES`` (field -> ``(lo, hi, bounds)``; default: ``>= 0``), then ``cls.check(obj, where)`` if
    the class defines it (checks across fields), all naming ``where.<field>``."""
    ranges = getattr(cls, "RANGES", {})
    names = {f.name for f in fields(cls)}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {d!r}")
    _check_keys(d, names, where)
    kwargs = {}
    for f in fields(cls):
        if f.name not in d and f.default is not MISSING:  # optional field (one with a default) left out
            kwargs[f.name] = f.default
            continue
        v = _req(d, f.name, where)
        t = str(f.type)
        if "bool" in t:
            if not isinstance(v, bool):
                raise ConfigError(f"{where}.{f.name}: expected true/false, got {v!r}")
        elif t.startswith(("int", "float")):
            lo, hi, bounds = ranges.get(f.name, (0, None, "[]"))
            v = _num(v, f"{where}.{f.name}", lo=lo, hi=hi, bounds=bounds, integer=t.startswith("int"),
                     allow_none="None" in t)
            v = float(v) if t.startswith("float") and v is not None else v
        elif t.startswith("str") and not isinstance(v, str):
            raise ConfigError(f"{where}.{f.name}: expected a string, got {v!r}")
        kwargs[f.name] = v
    obj = cls(**kwargs)
    if hasattr(obj, "check"):
        obj.check(where)
    return obj
