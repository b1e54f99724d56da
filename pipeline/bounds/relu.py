"""Linear relaxations of ReLU on a pre-activation interval ``[l, u]``, as pure functions.

Each ``relax_*(l, u)`` returns a :class:`Relaxation` of four tensors shaped like ``l``: lines
``lower_slope * x + lower_bias <= relu(x) <= upper_slope * x + upper_bias`` valid for every ``x`` in ``[l, u]``.
Stable neurons are exact in every relaxation: ``u <= 0`` gives ``0``, ``l >= 0`` gives ``x``.  For unstable ones
(``l < 0 < u``):

- :func:`relax_parallel` — the paper's symbolic linear relaxation (Neurify, Wang et al. 2018; also Wong & Kolter's
  dual): upper line through ``(l, 0)`` and ``(u, u)``, slope ``s = u / (u - l)``; lower line parallel, ``s * x``.
- :func:`relax_adaptive` — CROWN (Zhang et al. 2018): same upper line, lower slope 1 if ``u >= -l`` else 0.
- :func:`relax_concretize` — ReluVal's naive symbolic interval (Wang et al. 2018): lower ``0``, upper the constant
  ``u``.

Float rounding: ``s`` is computed in the working dtype, so the upper line at ``x = u`` can miss ``u`` by about one
ulp.  The verifier guards against this with a margin threshold (see :mod:`pipeline.bounds.verify`).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

__all__ = ["Relaxation", "relax_parallel", "relax_adaptive", "relax_concretize", "RelaxFn"]


class Relaxation(NamedTuple):
    lower_slope: torch.Tensor
    lower_bias: torch.Tensor
    upper_slope: torch.Tensor
    upper_bias: torch.Tensor


RelaxFn = Callable[[torch.Tensor, torch.Tensor], Relaxation]


def _cases(l: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    active = l >= 0
    unstable = (l < 0) & (u > 0)
    # Safe denominator: torch.where still differentiates the unselected branch, so avoid 0/0 there.
    denom = torch.where(unstable, u - l, torch.ones_like(u))
    chord = torch.where(unstable, u / denom, torch.zeros_like(u))
    return active, unstable, chord


def _upper(l: torch.Tensor, active: torch.Tensor, unstable: torch.Tensor,
           chord: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    slope = torch.where(active, torch.ones_like(l), chord)
    bias = torch.where(unstable, -chord * l, torch.zeros_like(l))
    return slope, bias


def relax_parallel(l: torch.Tensor, u: torch.Tensor) -> Relaxation:
    """Neurify's relaxation: chord above, the parallel line through the origin below."""
    active, unstable, chord = _cases(l, u)
    up_s, up_b = _upper(l, active, unstable, chord)
    return Relaxation(up_s, torch.zeros_like(l), up_s, up_b)


def relax_adaptive(l: torch.Tensor, u: torch.Tensor) -> Relaxation:
    """CROWN's relaxation: chord above, slope 1 (if ``u >= -l``) or 0 below."""
    active, unstable, chord = _cases(l, u)
    up_s, up_b = _upper(l, active, unstable, chord)
    low_s = torch.where(active | (unstable & (u >= -l)), torch.ones_like(l), torch.zeros_like(l))
    return Relaxation(low_s, torch.zeros_like(l), up_s, up_b)


def relax_concretize(l: torch.Tensor, u: torch.Tensor) -> Relaxation:
    """ReluVal's naive symbolic interval: an unstable neuron becomes the interval ``[0, u]``."""
    active, unstable, _ = _cases(l, u)
    one = torch.where(active, torch.ones_like(l), torch.zeros_like(l))
    return Relaxation(one, torch.zeros_like(l), one, torch.where(unstable, u, torch.zeros_like(u)))
