"""Training methods: a small base class and a registry keyed by the names used in params.yaml.

A method turns a batch into a loss; the :mod:`~pipeline.train.trainer` owns everything else (data, optimiser,
ε ramp, checkpoints, timing).  Adding a method is adding one file with one ``@register_method`` class.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, ContextManager, TypeVar

import torch
from torch import nn

from pipeline.utils.registry import Registry

__all__ = ["Method", "METHODS", "register_method", "get_method", "implemented_methods", "int_param", "number_param",
           "bool_param"]

M = TypeVar("M", bound="Method")


class Method:
    """Base class.  ``params`` are the run's resolved hyperparameters (params.yaml ``methods.<name>`` + overrides).

    ``uses_eps``: whether training depends on ε (if not, one model serves every ε row of the grid).
    ``mixed_precision`` (set by the trainer from params.yaml): run the natural forward passes and any adversarial
    example generation under bfloat16 autocast (:mod:`pipeline.utils.precision`); never the bounds of a verified
    or robust loss.  Logits are cast back to float32 before any loss.
    Subclasses implement :meth:`loss`; stateful ones (e.g. an adaptive α) also :meth:`end_epoch`,
    :meth:`state_dict` and :meth:`load_state_dict` (tensors and plain numbers only, so checkpoints load with
    weights_only); one that keeps other weights than the last (an average) :meth:`after_step`,
    :meth:`evaluation_weights` and :meth:`finalize`.
    """
    name: str = ""
    uses_eps: bool = True
    mixed_precision: bool = False
    target_eps: float = 0.0  # the run's training ε (set by the trainer; the ``eps`` a loss sees may be ramping)

    def __init__(self, params: dict[str, Any], dataset: str, seed: int):
        self.params = dict(params)
        self.dataset = dataset
        # The method's own RNG (e.g. which samples get the verified loss), separate from the data order, so a
        # method that draws nothing trains on exactly the batches natural training sees.
        self.generator = torch.Generator().manual_seed(seed + 7919)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, dict]:
        """Loss on pixels ``x`` ``[B, C, H, W]`` in [0, 1] with labels ``y`` ``[B]`` at radius ``eps``; returns the
        scalar loss and a dict of floats to log."""
        raise NotImplementedError

    def prepare_model(self, model: nn.Module) -> None:
        """Called once on the freshly built model before training (e.g. an initialisation suited to the method);
        a resumed run then loads its checkpoint over it.  Default: nothing."""

    def end_epoch(self, epoch: int, val_acc: float) -> dict[str, float]:
        """Called after each epoch with the validation accuracy; returns values to log."""
        return {}

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimiser step (e.g. to update an average of the weights).  Default: nothing."""

    def evaluation_weights(self, model: nn.Module) -> ContextManager[Any]:
        """Context in which ``model`` holds the weights the run would keep now, for the per-epoch validation
        (e.g. averaged weights, restored to the trained ones on exit).  Default: the trained weights."""
        return contextlib.nullcontext(model)

    def finalize(self, model: nn.Module) -> None:
        """Called once after the last epoch: put the weights the run keeps into ``model``.  Default: nothing (the
        last trained weights)."""

    def state_dict(self) -> dict[str, Any]:
        """Resumable state: tensors and plain numbers only (checkpoints load with weights_only=True)."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def int_param(params: dict[str, Any], method: str, name: str, minimum: int) -> int:
    """``params[name]`` as an integer ``>= minimum``; ``ValueError`` naming the method, key and value otherwise."""
    v = params.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{method} {name}: expected an integer >= {minimum}, got {v!r}")
    return v


def number_param(params: dict[str, Any], method: str, name: str, minimum: float = 0.0, positive: bool = False,
                 default: float | None = None) -> float:
    """``params[name]`` as a finite number ``>= minimum`` (``> minimum`` if ``positive``); NaN and ±inf rejected."""
    v = params.get(name, default)
    bad = isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < minimum \
        or (positive and v <= minimum)
    if bad:
        raise ValueError(f"{method} {name}: expected a finite number {'>' if positive else '>='} {minimum}, got {v!r}")
    return float(v)


def bool_param(params: dict[str, Any], method: str, name: str) -> bool:
    v = params.get(name)
    if not isinstance(v, bool):
        raise ValueError(f"{method} {name}: expected true/false, got {v!r}")
    return v


METHODS: Registry = Registry("training method")  # name (as params.yaml uses it) -> method class


def register_method(name: str) -> Callable[[type[M]], type[M]]:
    """Class decorator: make a training method available as ``get_method(name)``."""
    return METHODS.register(name)


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name`` (``ValueError`` naming the value and the known names otherwise)."""
    return METHODS.get(name)


def implemented_methods() -> list[str]:
    return sorted(METHODS)
