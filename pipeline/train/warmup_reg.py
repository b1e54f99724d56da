"""Warm-up regularisers of Shi, Wang, Zhang, Yi, Hsieh (2021), "Fast Certified Robust Training with Short Warmup".

IBP training's early epochs tend to make interval bounds explode layer by layer and ReLUs mostly dead; the paper adds,
while ε ramps up, two penalties on the interval (IBP) pre-activation bounds ``[l, u]`` of every ReLU:

- **tightness**: ``relu(τ − r₀ / r̄) / τ`` with ``r̄`` the layer's mean radius ``(u − l) / 2`` and ``r₀`` the mean
  radius of the box entering the network's first affine layer: the layer's bounds may be at most ``1/τ`` times
  looser than the input's;
- **ReLU balance**: with centre ``c = (l + u) / 2``, the ratios (each folded into ``(0, 1]`` as ``min(ρ, 1/ρ)``)
  of the mean centre over active (``l > 0``) to minus that over inactive (``u < 0``) neurons, and of their summed
  squared deviations from the mean centre: ``(relu(τ − ρ_mean) + relu(τ − ρ_var)) / τ``; a layer without an active
  or without an inactive neuron contributes no balance term (the reference code adds a constant there, without
  gradient, or skips it on a non-finite ratio: the same gradient either way).

Both are averaged over the ReLUs; the training method weighs the sum by ``λ · (1 − ε / target ε)`` (zero once the
ramp ends).  τ = 0.5 as in the paper.  Shapes: each bound ``[B, *neurons]``; the result is a scalar.
These only shape training: certification never sees them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.bounds.base import Domain
from pipeline.bounds.graph import Conv, Linear, Op, ReLU

__all__ = ["ReluInputs", "warmup_regularizer", "TAU"]

TAU = 0.5


class ReluInputs:
    """An ``observe`` callback for :func:`pipeline.bounds.margin_lower_bounds` with the ``interval`` domain: keeps
    the box entering the first affine layer (``input``) and the bounds entering each ReLU (``pre``), from the same
    pass as the loss's bound.  (It concretises each state it keeps: cheap for intervals, a whole back-substitution
    for a backward domain's state.)"""

    def __init__(self) -> None:
        self.input: tuple[torch.Tensor, torch.Tensor] | None = None
        self.pre: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, op: Op, state: Domain) -> None:
        if isinstance(op, ReLU):
            self.pre.append(state.concretize())
        elif isinstance(op, (Linear, Conv)) and self.input is None:
            self.input = state.concretize()


def _fold(ratio: torch.Tensor) -> torch.Tensor:
    return torch.minimum(ratio, 1 / ratio.clamp_min(1e-12))


def warmup_regularizer(inputs: ReluInputs, tau: float = TAU) -> torch.Tensor:
    """The tightness plus ReLU-balance penalty, averaged over the ReLUs the pass recorded."""
    if not 0 < tau <= 1:
        raise ValueError(f"warmup_regularizer tau: expected a number in (0, 1], got {tau!r}")
    if inputs.input is None or not inputs.pre:
        raise ValueError("warmup_regularizer: the pass recorded no affine input or no ReLU; expected a network with "
                         "at least one Linear/Conv layer followed by a ReLU")
    lo0, hi0 = inputs.input
    r0 = ((hi0 - lo0) / 2).mean().detach()
    tight = relu_bal = 0
    for lo, hi in inputs.pre:
        centre, radius = (lo + hi) / 2, (hi - lo) / 2
        tight = tight + F.relu(tau - r0 / radius.mean().clamp_min(1e-12)) / tau
        active, inactive = lo > 0, hi < 0
        if not (bool(active.any()) and bool(inactive.any())):
            continue
        active, inactive = active.to(lo.dtype), inactive.to(lo.dtype)
        dev = (centre - centre.mean()) ** 2
        mean_ratio = _fold((centre * active).mean() / -(centre * inactive).mean())
        var_ratio = _fold((dev * active).sum() / (dev * inactive).sum())
        term = (F.relu(tau - mean_ratio) + F.relu(tau - var_ratio)) / tau
        if bool(torch.isfinite(term)):  # e.g. every deviation zero
            relu_bal = relu_bal + term
    return (tight + relu_bal) / len(inputs.pre)
