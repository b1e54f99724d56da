"""Lazy package attributes (PEP 562), so that importing a light submodule does not import torch.

A package's ``__init__`` lists its public names with the module each lives in; the module is imported on the first
access of one of its names.  The training stage's supervising process (which only spawns and watches the worker)
imports :mod:`pipeline.data.manifest` and :mod:`pipeline.utils.io` without paying torch's import (seconds per
training job; docs/performance.md).  A lazy name must not also be a submodule's name (refused below).
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public ``names`` map to the submodule defining each."""
    namespace = importlib.import_module(package).__dict__
    # a lazy name that is also a submodule's would be shadowed by the submodule once anything imports it (Python sets
    # the package attribute), and ``from package import name`` would then return the module
    clash = sorted(n for n in names if importlib.util.find_spec(f"{package}.{n}") is not None)
    if clash:
        raise ImportError(f"{package}: lazy names {clash} are also submodule names; import them eagerly instead")

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later accesses are plain attribute lookups
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
