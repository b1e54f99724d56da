"""One registry type for everything chosen by name in params.yaml: bound domains, training methods, attacks.

A :class:`Registry` is a ``dict`` (name -> class), so ``name in R``, ``sorted(R)`` and ``R.values()`` work, plus a
class decorator that registers under a name (and sets the class's ``name``) and a lookup whose error names the value
and every known name.  Choosing code by name goes through here only; nothing is looked up with ``eval``.
"""
from __future__ import annotations

from typing import Callable, TypeVar

__all__ = ["Registry"]

T = TypeVar("T", bound=type)


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind  # what is registered, for messages: "bound domain", "training method", "attack"

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: make the class available as ``get(name)``; a name registers once."""
        def deco(cls: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            cls.name = name
            self[name] = cls
            return cls
        return deco

    def get(self, name: str):  # type: ignore[override]  (raises instead of returning None)
        """The class registered as ``name``; ``ValueError`` naming the value and the known names otherwise."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {sorted(self)}")
        return self[name]
