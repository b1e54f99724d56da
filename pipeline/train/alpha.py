"""Schedules of MixTrain's mixing weight α (loss = (1-α)·natural + α·verified), updated once per epoch.

- ``constant``: α = ``start`` throughout (the paper's MNIST rows).
- ``staircase``: the paper's dynamic rule: every ``every`` epochs α moves by ``step`` — up while the accuracy
  rises (or holds), down when it falls — clipped to ``[min, max]``.
- ``cifar``: the paper's CIFAR rule: start 0.4, +``step`` every ``every`` epochs up to ``max``, and -``step`` at that
  point instead whenever the accuracy is below ``target_acc``.

The paper adapts on test accuracy; we adapt on the validation split carved from the training set, so no test image
influences training.  ``update`` takes the epoch just finished (1-based) and its validation accuracy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["AlphaSchedule", "alpha_schedule"]


@dataclass
class AlphaSchedule:
    kind: str
    start: float
    step: float = 0.05
    max: float = 0.8
    min: float = 0.0
    every: int = 5
    target_acc: float = 0.7
    value: float = -1.0
    last_acc: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "staircase", "cifar"):
            raise ValueError(f"alpha_rule.kind: expected constant, staircase or cifar, got {self.kind!r}")
        for name in ("start", "max", "min"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"alpha_rule.{name}: must lie in [0, 1], got {getattr(self, name)}")
        if self.every < 1:
            raise ValueError(f"alpha_rule.every: must be >= 1, got {self.every}")
        if self.value < 0:
            self.value = self.start

    def update(self, epoch: int, acc: float) -> float:
        if self.kind != "constant" and epoch % self.every == 0:
            if self.kind == "cifar":
                delta = -self.step if acc < self.target_acc else self.step
            else:
                delta = self.step if self.last_acc is None or acc >= self.last_acc else -self.step
            self.value = min(self.max, max(self.min, round(self.value + delta, 10)))
            self.last_acc = acc
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "last_acc": -1.0 if self.last_acc is None else self.last_acc}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.last_acc = None if state["last_acc"] < 0 else float(state["last_acc"])


def alpha_schedule(alpha: Any, rule: dict[str, Any]) -> AlphaSchedule:
    """``alpha``: a number (constant α) or ``"adaptive"`` (the dataset's ``rule``)."""
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        return AlphaSchedule("constant", float(alpha))
    if alpha != "adaptive":
        raise ValueError(f"alpha: expected a number in [0, 1] or 'adaptive', got {alpha!r}")
    if not isinstance(rule, dict):
        raise ValueError(f"alpha_rule: 'adaptive' needs a mapping with kind and start (and step, max, min, every, "
                         f"target_acc), got {rule!r}")
    unknown = sorted(set(rule) - {"kind", "start", "step", "max", "min", "every", "target_acc"})
    if unknown or "kind" not in rule or "start" not in rule:
        raise ValueError(f"alpha_rule: expected kind, start and any of step, max, min, every, target_acc; got "
                         f"{sorted(rule)}")
    return AlphaSchedule(**rule)
