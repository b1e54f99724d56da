"""The paper's published numbers (Tables I, III-VI), as validated data the tables stage prints beside ours.

The data live in ``mixtrain_paper.yaml`` next to this module: one entry per (table, run, column) with the value, its
unit implied by the column, and its source (which version of the paper, or which secondary quote, and where in it).
A cell whose paper value was not read is an explicit n/a with its reason, never a guessed number.  An entry with
column ``"*"`` covers every column of its row that has no entry of its own.

:func:`load_paper_numbers` validates the whole file once and raises :class:`PaperNumbersError` naming the entry (its
index, table, run and column) and what was expected.  Torch-free.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ConfigError

__all__ = ["DEFAULT_PATH", "TABLES", "PERCENT_COLUMNS", "SECONDS_COLUMNS", "MB_COLUMNS", "COLUMNS", "WHOLE_ROW",
           "Source", "PaperValue", "PaperNumbers", "PaperNumbersError", "load_paper_numbers", "parse_paper_numbers"]

DEFAULT_PATH = Path(__file__).with_name("mixtrain_paper.yaml")
#: our table names for the paper's Tables I, III, IV, V, VI
TABLES = ("table1", "table3", "table4", "table5", "table6")
PERCENT_COLUMNS = frozenset({"acc", "era_pgd", "era_cw", "era_interval", "vra",
                             "success_pgd", "success_cw", "success_interval"})
SECONDS_COLUMNS = frozenset({"batch_time_s", "train_time_s", "time_to_target_s"})
MB_COLUMNS = frozenset({"peak_mem_mb"})
COLUMNS = PERCENT_COLUMNS | SECONDS_COLUMNS | MB_COLUMNS
#: the column of an entry that covers the rest of its row
WHOLE_ROW = "*"

_TOP_KEYS = {"sources", "entries", "reasons"}
_SOURCE_KEYS = {"kind", "checked_against_paper", "title", "version", "url", "note"}
_SOURCE_REQUIRED = {"kind", "checked_against_paper", "title", "version", "url"}
_ENTRY_KEYS = {"table", "run", "paper_row", "column", "value", "reason", "source", "where"}


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        self.flatten_mapping(node)
        keys = [self.construct_object(k, deep=True) for k, _ in node.value]
        dup = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
        if dup is not None:
            raise yaml.constructor.ConstructorError(None, None, f"key {dup!r} given twice in one mapping",
                                                    node.start_mark)
        return super().construct_mapping(node, deep=deep)


class PaperNumbersError(ConfigError):
    """The paper-numbers file is missing or malformed; the message names the entry and what was expected."""


@dataclass(frozen=True)
class Source:
    key: str
    kind: str                    # "paper" (read in the paper itself) | "secondary" (a quote of it)
    checked_against_paper: bool  # False: rendered with a dagger until someone checks it against the paper
    title: str
    version: str
    url: str | None
    note: str = ""


@dataclass(frozen=True)
class PaperValue:
    """One cell of the paper (``value`` in the column's unit), or an explicit n/a (``value is None``, ``reason``)."""
    table: str
    run: str
    column: str
    value: float | None
    reason: str | None
    source: Source | None
    paper_row: str | None
    where: str | None

    @property
    def unit(self) -> str:
        return "%" if self.column in PERCENT_COLUMNS else "s" if self.column in SECONDS_COLUMNS else "MB"

    @property
    def checked(self) -> bool:
        return self.source is not None and self.source.checked_against_paper


@dataclass(frozen=True)
class PaperNumbers:
    sources: dict[str, Source]
    entries: tuple[PaperValue, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {(e.table, e.run, e.column): e for e in self.entries})

    def lookup(self, table: str, run: str, column: str) -> PaperValue | None:
        """The entry for this cell, else its row's ``"*"`` entry, else ``None`` (the data say nothing of it)."""
        index: dict[tuple[str, str, str], PaperValue] = self._index  # type: ignore[attr-defined]
        return index.get((table, run, column)) or index.get((table, run, WHOLE_ROW))

    def has_row(self, table: str, run: str) -> bool:
        return any((table, run) == (e.table, e.run) for e in self.entries)


def _fail(where: str, msg: str) -> PaperNumbersError:
    return PaperNumbersError(f"{where}: {msg}")


def _str(d: dict, key: str, where: str, *, optional: bool = False) -> str | None:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v.strip():
        raise _fail(where, f"'{key}' must be a non-empty string, got {v!r}")
    return v


def _parse_source(key: Any, d: Any, where: str) -> Source:
    at = f"{where} sources.{key}"
    if not isinstance(key, str) or not key:
        raise _fail(where, f"a source key must be a non-empty string, got {key!r}")
    if not isinstance(d, dict):
        raise _fail(at, f"expected a mapping, got {type(d).__name__}")
    unknown, missing = set(d) - _SOURCE_KEYS, _SOURCE_REQUIRED - set(d)
    if unknown or missing:
        raise _fail(at, f"unknown keys {sorted(unknown)}, missing keys {sorted(missing)} (allowed: "
                        f"{sorted(_SOURCE_KEYS)})")
    if d["kind"] not in ("paper", "secondary"):
        raise _fail(at, f"'kind' must be 'paper' or 'secondary', got {d['kind']!r}")
    if not isinstance(d["checked_against_paper"], bool):
        raise _fail(at, f"'checked_against_paper' must be true or false, got {d['checked_against_paper']!r}")
    return Source(key=key, kind=d["kind"], checked_against_paper=d["checked_against_paper"],
                  title=_str(d, "title", at), version=_str(d, "version", at),
                  url=_str(d, "url", at, optional=True), note=_str(d, "note", at, optional=True) or "")


def _parse_entry(i: int, d: Any, sources: dict[str, Source], where: str) -> PaperValue:
    at = f"{where} entries[{i}]"
    if not isinstance(d, dict):
        raise _fail(at, f"expected a mapping, got {type(d).__name__}")
    at = f"{at} ({d.get('table')} / {d.get('run')} / {d.get('column')})"
    unknown = set(d) - _ENTRY_KEYS
    if unknown:
        raise _fail(at, f"unknown keys {sorted(unknown)} (allowed: {sorted(_ENTRY_KEYS)})")
    table, run, column = d.get("table"), _str(d, "run", at), d.get("column")
    if table not in TABLES:
        raise _fail(at, f"'table' must be one of {list(TABLES)}, got {table!r}")
    if column != WHOLE_ROW and column not in COLUMNS:
        raise _fail(at, f"'column' must be '{WHOLE_ROW}' or one of {sorted(COLUMNS)}, got {column!r}")
    has_value, has_reason = d.get("value") is not None, d.get("reason") is not None
    if has_value == has_reason:
        raise _fail(at, "give exactly one of 'value' (the paper's number) or 'reason' (why it is n/a)")
    source = None
    if d.get("source") is not None or has_value:
        if d.get("source") not in sources:
            raise _fail(at, f"'source' must be one of {sorted(sources)}, got {d.get('source')!r}")
        source = sources[d["source"]]
    value = None
    if has_value:
        v = d["value"]
        if column == WHOLE_ROW:
            raise _fail(at, f"a '{WHOLE_ROW}' entry covers a whole row: it takes a 'reason', not a 'value'")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise _fail(at, f"'value' must be a finite number >= 0, got {v!r}")
        if column in PERCENT_COLUMNS and v > 100:
            raise _fail(at, f"'value' of a percentage column must be in [0, 100], got {v!r}")
        _str(d, "where", at)  # a number without the place it was read is not data
        value = float(v)
    reason = _str(d, "reason", at) if has_reason else None
    return PaperValue(table=table, run=run, column=column, value=value, reason=reason, source=source,
                      paper_row=_str(d, "paper_row", at, optional=True), where=_str(d, "where", at, optional=True))


def parse_paper_numbers(raw: Any, where: str = "paper numbers") -> PaperNumbers:
    """Validate an already-loaded mapping (the YAML file's content)."""
    if not isinstance(raw, dict):
        raise _fail(where, f"expected a mapping at the top level, got {type(raw).__name__}")
    unknown, missing = set(raw) - _TOP_KEYS, {"sources", "entries"} - set(raw)
    if unknown or missing:
        raise _fail(where, f"unknown top-level keys {sorted(unknown)}, missing {sorted(missing)}")
    reasons = raw.get("reasons", {})
    if not isinstance(reasons, dict) or not all(isinstance(v, str) for v in reasons.values()):
        raise _fail(where, "'reasons' (shared n/a texts) must be a mapping of name -> string")
    if not isinstance(raw["sources"], dict) or not raw["sources"]:
        raise _fail(where, "'sources' must be a non-empty mapping of source key -> source")
    sources = {k: _parse_source(k, v, where) for k, v in raw["sources"].items()}
    if not isinstance(raw["entries"], list):
        raise _fail(where, f"'entries' must be a list, got {type(raw['entries']).__name__}")
    entries, seen = [], {}
    for i, d in enumerate(raw["entries"]):
        e = _parse_entry(i, d, sources, where)
        key = (e.table, e.run, e.column)
        if key in seen:
            raise _fail(f"{where} entries[{i}] ({e.table} / {e.run} / {e.column})",
                        f"duplicate of entries[{seen[key]}]: one entry per (table, run, column)")
        seen[key] = i
        entries.append(e)
    return PaperNumbers(sources=sources, entries=tuple(entries))


def load_paper_numbers(path: Path | str = DEFAULT_PATH) -> PaperNumbers:
    """Read and validate the paper-numbers file (default: ``mixtrain_paper.yaml`` beside this module)."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except OSError as e:
        raise PaperNumbersError(f"{path}: cannot read the paper-numbers file ({e})") from e
    except yaml.YAMLError as e:
        raise PaperNumbersError(f"{path}: not valid YAML ({e})") from e
    return parse_paper_numbers(raw, str(path))
