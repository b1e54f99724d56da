"""Symbolic linear relaxation: the paper's sound approximation (Neurify, Wang et al., NeurIPS 2018).

Every neuron carries two linear equations in the input, ``L(x) <= z(x) <= U(x)``.  The input box is written
``x = c + r * t`` with ``t`` in ``[-1, 1]^d``, so an equation is a row of constants plus ``d`` coefficient rows
(``[B, 1 + d, *shape]``) and concretises as ``e_0 -+ sum |e_i|``.  Affine layers map both equations exactly
(:class:`~pipeline.bounds.base.RowDomain`).  At a ReLU each equation is relaxed with its own concrete bounds by the
domain's ``relax`` (the parallel relaxation here: an unstable ``U`` with bounds ``[l, u]`` becomes
``u/(u-l) * (U - l)``, an unstable ``L`` becomes ``u/(u-l) * L``).

Companion interval: the state also carries interval bounds, intersected with the symbolic ones at every ReLU and at
:meth:`concretize`.  Stability is decided on the intersection (a neuron the interval proves dead or active is exact),
and the result is never looser than plain IBP on the same box.  Without it, the theory allows exceptions: the parallel
lower line ``s * L`` concretises below 0 where IBP has 0, and errors compound over layers, so a pure symbolic bound
can be looser than IBP (``intersect_interval = False`` shows it; see docs/bounds.md).

Cost: the coefficient rows make every layer as expensive as a batch of ``d`` inputs (784 on MNIST, 3072 on CIFAR) per
sample, which is why MixTrain computes this loss on ``k`` samples only.  Gradients flow through all of it.
"""
from __future__ import annotations

from typing import Callable

import torch

from pipeline.bounds.base import Domain, Parts, RowDomain, register_domain
from pipeline.bounds.interval import IntervalDomain
from pipeline.bounds.patches import PatchCoef, scale_rows, spread
from pipeline.bounds.relu import RelaxFn, relax_parallel

__all__ = ["SymbolicLinearDomain", "input_parts", "input_rows", "concretize_eq"]


def input_parts(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Constant ``[B, 1, *shape]`` and coefficients ``[B, d, *shape]`` of the identity ``x = c + r * t``."""
    b, shape = lo.shape[0], lo.shape[1:]
    c, r = ((lo + hi) / 2).flatten(1), ((hi - lo) / 2).flatten(1)
    return c.view(b, 1, *shape), torch.diag_embed(r).view(b, c.shape[1], *shape)


def input_rows(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | PatchCoef]:
    """Like :func:`input_parts`, with the coefficients of an image input (``[B, C, H, W]``) in window form
    (:mod:`pipeline.bounds.patches`: same equations, a fraction of the work through convolutions)."""
    if lo.dim() != 4:
        return input_parts(lo, hi)
    return ((lo + hi) / 2)[:, None], PatchCoef.from_radius((hi - lo) / 2)


def concretize_eq(const: torch.Tensor, coef) -> tuple[torch.Tensor, torch.Tensor]:
    """Range of an equation over ``t`` in ``[-1, 1]^d``: ``(e_0 - sum|e_i|, e_0 + sum|e_i|)``, each ``[B, *shape]``."""
    s = spread(coef)
    return const[:, 0] - s, const[:, 0] + s


def _exact_where(slope: torch.Tensor, bias: torch.Tensor, dead: torch.Tensor,
                 active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Override a line by the exact map where the neuron is proven dead (0) or active (identity)."""
    slope = torch.where(dead, torch.zeros_like(slope), torch.where(active, torch.ones_like(slope), slope))
    return slope, torch.where(dead | active, torch.zeros_like(bias), bias)


@register_domain("symbolic_linear")
class SymbolicLinearDomain(RowDomain):
    relax: RelaxFn = staticmethod(relax_parallel)
    intersect_interval: bool = True

    def __init__(self, parts: Parts, companion: IntervalDomain):
        self.lc, self.la, self.uc, self.ua = parts
        self.companion = companion

    @classmethod
    def from_box(cls, lo: torch.Tensor, hi: torch.Tensor) -> "SymbolicLinearDomain":
        c, a = input_rows(lo, hi)
        return cls((c, a, c, a), IntervalDomain(lo, hi))

    def parts(self) -> Parts:
        return self.lc, self.la, self.uc, self.ua

    def with_parts(self, parts: Parts, op: Callable[[Domain], Domain]) -> "SymbolicLinearDomain":
        return type(self)(parts, op(self.companion))

    def relu(self) -> "SymbolicLinearDomain":
        low_l, low_u = concretize_eq(self.lc, self.la)
        up_l, up_u = concretize_eq(self.uc, self.ua)
        pre_lo, pre_hi = low_l, up_u
        if self.intersect_interval:
            pre_lo = torch.maximum(pre_lo, self.companion.lo)
            pre_hi = torch.minimum(pre_hi, self.companion.hi)
        lo_line = self.relax(low_l, low_u)
        up_line = self.relax(up_l, up_u)
        # Neurons proven dead or active on the (intersected) pre-activation bounds are exact.
        dead, active = pre_hi <= 0, pre_lo >= 0
        ls, lb = _exact_where(lo_line.lower_slope, lo_line.lower_bias, dead, active)
        us, ub = _exact_where(up_line.upper_slope, up_line.upper_bias, dead, active)
        parts = (self.lc * ls[:, None] + lb[:, None], scale_rows(self.la, ls),
                 self.uc * us[:, None] + ub[:, None], scale_rows(self.ua, us))
        companion = IntervalDomain(pre_lo.clamp_min(0), pre_hi.clamp_min(0))
        return type(self)(parts, companion)

    def tighten(self, lo: torch.Tensor, hi: torch.Tensor) -> "SymbolicLinearDomain":
        """The same equations with extra sound bounds ``[lo, hi]`` on the current layer (kept in the companion)."""
        return type(self)(self.parts(), self.companion.tighten(lo, hi))

    def add(self, other: "SymbolicLinearDomain") -> "SymbolicLinearDomain":
        parts = tuple(a + b for a, b in zip(self.parts(), other.parts()))
        return type(self)(parts, self.companion.add(other.companion))  # type: ignore[arg-type]

    def concretize_lower(self) -> torch.Tensor:
        lb = self.lc[:, 0] - spread(self.la)
        return torch.maximum(lb, self.companion.lo) if self.intersect_interval else lb

    def concretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        lb, _ = concretize_eq(self.lc, self.la)
        _, ub = concretize_eq(self.uc, self.ua)
        if self.intersect_interval:
            lb, ub = torch.maximum(lb, self.companion.lo), torch.minimum(ub, self.companion.hi)
        return lb, ub
