"""Exponential moving average of a model's weights (Polyak averaging), the weights a run evaluates and keeps.

``WeightEMA(decay)``: after every optimiser step ``update(model)`` moves the average towards the current
parameters, ``avg ← d · avg + (1 − d) · w`` with ``d = min(decay, (1 + t) / (10 + t))`` at step ``t`` (the usual
warm-up, so the first steps do not drag the initialisation along).  ``decay`` 0.999 averages over about the last
1,000 steps.  Buffers (BatchNorm statistics) are not averaged: the averaged model uses the current buffers.

``swapped(model)`` is a context manager that puts the averaged parameters into ``model`` and restores the trained
ones on exit (bit for bit), for validation; ``copy_to(model)`` puts them in for good (the model a run saves).
State: tensors and plain numbers only (checkpoints load with ``weights_only=True``).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["WeightEMA"]


class WeightEMA:
    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"weight EMA decay: expected a number in (0, 1), got {decay!r}")
        self.decay = decay
        self.steps = 0
        self.avg: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for name, p in model.named_parameters():
            a = self.avg.get(name)
            if a is None or a.shape != p.shape:
                self.avg[name] = p.detach().clone()
            else:
                if a.device != p.device:
                    a = self.avg[name] = a.to(p.device)
                a.lerp_(p.detach(), 1.0 - d)
        self.steps += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged parameters into ``model`` (nothing before the first ``update``)."""
        for name, p in model.named_parameters():
            if name in self.avg:
                p.copy_(self.avg[name].to(p.device))

    @contextlib.contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        saved = {name: p.detach().clone() for name, p in model.named_parameters()}
        try:
            self.copy_to(model)
            yield model
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(saved[name])

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "avg": {k: v.detach().cpu() for k, v in self.avg.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self.avg = {k: v.clone() for k, v in state["avg"].items()}
