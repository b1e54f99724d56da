"""What every attack shares: the result type, the cost meter, projection, the success re-check and the registry.

Threat model (the same as the bound engine's, docs/bounds.md): the L∞ ball of radius ``eps`` around the pixel image
``x`` intersected with [0, 1], in pixel space; the model's own normalisation layer maps it.

Shapes: ``x`` pixels ``[B, C, H, W]`` (any ``[B, ...]``) in [0, 1], ``y`` int64 ``[B]``, logits ``[B, classes]``.

:class:`Attack` does everything that is not the algorithm, so a subclass writes only :meth:`Attack.perturb`:

1. moves ``x``/``y`` to the model's device, puts the model in eval mode (its previous mode is restored afterwards,
   also on error) and enables autograd even if the caller runs under ``torch.no_grad``;
2. one clean forward pass: samples already misclassified keep ``x_adv = x`` and are not attacked;
3. ``perturb`` runs on the correctly classified samples only;
4. the returned points (non-finite pixels replaced by ``x``'s) are projected onto the ε-ball ∩ [0, 1]
   (:func:`project`) and *re-checked* with a fresh forward pass (:func:`recheck`): a sample counts as a success
   only if its ``x_adv`` is inside the ball (1e-6 slack for float rounding), inside [0, 1] (same slack), finite,
   and misclassified.  Whatever an algorithm claims, only this re-check decides ``success``.

Mixed precision (``Attack.mixed_precision``, set by the evaluate stage from params.yaml): step 3 alone runs under
bfloat16 autocast, with the model's logits cast back to float32 before the attack's loss
(:func:`pipeline.utils.precision.mixed_forward`).  The clean forward (1) and the re-check (4) always run with autocast
off, in the model's own float32, so ``success`` is decided in float32 whatever the setting.  (Bounds an attack uses
to *steer* its search, as the interval attack does, run under the autocast too; they certify nothing.  VRA never
runs inside an attack.)

Cost (``AttackResult.passes``): the noise-free unit for equal-budget comparisons is one forward or one backward pass
over the batch the caller passed.  Work on a subset of the batch counts pro rata (the :class:`CostMeter` adds
``passes × samples`` and reports ``ceil(total / B)``), so an attack that stops early on broken samples is charged
less.  The clean forward and the re-check forward are included (1 + 1).
"""
from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, TypeVar

import torch
from torch import nn

from pipeline.utils.registry import Registry

from pipeline.utils.precision import full_precision, mixed_forward

__all__ = ["AttackResult", "CostMeter", "Attack", "ATTACKS", "register_attack", "get_attack", "project", "recheck",
           "model_device", "check_int", "check_nonneg", "RECHECK_TOL"]

#: Slack (pixel units) allowed by :func:`recheck` for float rounding of the ball and [0, 1] constraints.
RECHECK_TOL = 1e-6


@dataclass
class AttackResult:
    """``x_adv`` ``[B, ...]`` (inside the ε-ball ∩ [0, 1]), ``success`` bool ``[B]`` (re-checked), ``passes``
    (forward and backward passes over the batch, see the module docstring) and wall-clock ``seconds``."""
    x_adv: torch.Tensor
    success: torch.Tensor
    passes: int
    seconds: float


class CostMeter:
    """Counts cost in sample-passes: ``add(p, n)`` charges ``p`` passes over ``n`` samples (default: the batch)."""

    def __init__(self, batch: int):
        if batch < 1:
            raise ValueError(f"CostMeter needs a batch of at least one sample, got {batch}")
        self.batch = batch
        self.sample_passes = 0

    def add(self, passes: int, samples: int | None = None) -> None:
        n = self.batch if samples is None else int(samples)
        if passes < 0 or n < 0:
            raise ValueError(f"cost must be non-negative, got {passes} passes over {n} samples")
        self.sample_passes += int(passes) * n

    @property
    def passes(self) -> int:
        """Passes over the whole batch, rounded up."""
        return math.ceil(self.sample_passes / self.batch)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """``x_adv`` clamped to the L∞ ball of radius ``eps`` around ``x``, then to [0, 1] (``x`` itself is in [0, 1], so
    the result lies in the intersection)."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


@torch.no_grad()
def recheck(model: nn.Module, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float,
            tol: float = RECHECK_TOL) -> torch.Tensor:
    """Bool ``[B]``: ``x_adv`` is finite, within ``eps + tol`` of ``x`` in L∞, within ``[-tol, 1 + tol]``, and the
    model (one fresh forward pass, in whatever mode it is in) misclassifies it."""
    flat, ref = x_adv.flatten(1), x.flatten(1)
    finite = torch.isfinite(flat).all(1)
    in_ball = (flat - ref).abs().amax(1) <= eps + tol
    in_range = (flat.amin(1) >= -tol) & (flat.amax(1) <= 1.0 + tol)
    ok = finite & in_ball & in_range
    wrong = model(torch.where(torch.isfinite(x_adv), x_adv, x)).argmax(1) != y
    return ok & wrong


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def check_int(name: str, value: int, minimum: int) -> int:
    """``value`` if it is an int (not a bool) ``>= minimum``; ``ValueError`` naming the parameter otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"attack parameter {name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_nonneg(name: str, value: float) -> float:
    """``float(value)`` if it is a finite number ``>= 0``; ``ValueError`` naming the parameter otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"attack parameter {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_inputs(x: torch.Tensor, y: torch.Tensor, eps: float) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"attack input x must be a float tensor [B, ...], got "
                         f"{type(x).__name__} {getattr(x, 'dtype', '')} {tuple(getattr(x, 'shape', ()))}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"attack labels y must have shape [B] = ({x.shape[0]},), got {tuple(y.shape)}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"attack eps must be a finite number >= 0, got {eps!r}")
    if x.numel() and (x.amin() < 0 or x.amax() > 1):
        raise ValueError(f"attack input x must be pixels in [0, 1], got range "
                         f"[{float(x.amin()):.4g}, {float(x.amax()):.4g}]")


class Attack(ABC):
    """Base class: call ``attack(model, x, y, eps, generator=None)`` -> :class:`AttackResult`.

    Subclasses implement :meth:`perturb` only; ``name`` is set by :func:`register_attack`.  ``mixed_precision``
    (class default False; set it on an instance): run :meth:`perturb` under bfloat16 autocast (see the module
    docstring); the clean and re-check forwards stay float32.
    """
    name: ClassVar[str] = ""
    mixed_precision: bool = False

    @abstractmethod
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                generator: torch.Generator | None, meter: CostMeter) -> torch.Tensor:
        """Candidate adversarial points ``[n, ...]`` for the (correctly classified) samples ``x`` ``[n, ...]``.

        Runs with the model in eval mode, on its device, with autograd enabled.  Charge every forward/backward to
        ``meter`` (``meter.add(passes, n_samples)``).  The output is projected and re-checked by the caller, so it
        need not be adversarial (or even inside the ball)."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                 generator: torch.Generator | None = None) -> AttackResult:
        _check_inputs(x, y, eps)
        eps = float(eps)
        device = model_device(model)
        x, y = x.detach().to(device), y.to(device)
        was_training = model.training
        model.eval()
        try:
            _sync(device)
            start = time.perf_counter()
            meter = CostMeter(x.shape[0])
            with torch.no_grad(), full_precision(device):
                wrong = model(x).argmax(1) != y
            meter.add(1)
            x_adv = x.clone()
            todo = (~wrong).nonzero().flatten()
            if todo.numel():
                with torch.enable_grad(), mixed_forward(model, device, self.mixed_precision):
                    out = self.perturb(model, x[todo], y[todo], eps, generator, meter)
                out = out.detach().to(x_adv.dtype)
                x_adv[todo] = torch.where(torch.isfinite(out), out, x[todo])  # a NaN/inf pixel falls back to x
            x_adv = project(x_adv, x, eps)
            with full_precision(device):  # success is decided in float32, whatever ran inside perturb
                success = recheck(model, x_adv, x, y, eps)
            meter.add(1)
            _sync(device)
            seconds = time.perf_counter() - start
        finally:
            model.train(was_training)
        return AttackResult(x_adv, success, meter.passes, seconds)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


A = TypeVar("A", bound=Attack)

#: attack name (as params.yaml uses it) -> class
ATTACKS: Registry = Registry("attack")


def register_attack(name: str) -> Callable[[type[A]], type[A]]:
    """Class decorator: make an attack available as ``get_attack(name)``."""
    return ATTACKS.register(name)


def get_attack(name: str) -> type[Attack]:
    """The attack class registered as ``name`` (``ValueError`` naming the value and the known names otherwise)."""
    return ATTACKS.get(name)
