"""Interval bound propagation (IBP; Gowal et al. 2018, Mirman et al. 2018's Box).

State: elementwise ``lo <= x <= hi`` ``[B, *shape]``.  Affine layers use the centre/radius form; ReLU is monotone so
``[relu(lo), relu(hi)]``.  Cost: two forward passes of the layer per step (one with ``|W|``).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from pipeline.bounds.base import Domain, Parts, RowDomain, register_domain

__all__ = ["IntervalDomain"]


@register_domain("interval")
class IntervalDomain(RowDomain):
    def __init__(self, lo: torch.Tensor, hi: torch.Tensor):
        self.lo = lo
        self.hi = hi

    @classmethod
    def from_box(cls, lo: torch.Tensor, hi: torch.Tensor) -> "IntervalDomain":
        return cls(lo, hi)

    def parts(self) -> Parts:
        return self.lo[:, None], None, self.hi[:, None], None

    def with_parts(self, parts: Parts, op: Callable[[Domain], Domain]) -> "IntervalDomain":
        return IntervalDomain(parts[0][:, 0], parts[2][:, 0])

    def _centre_radius(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.lerp(self.lo, self.hi, 0.5), (self.hi - self.lo).mul_(0.5)

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None) -> "IntervalDomain":
        """The centre/radius form with the bias inside the product (fewest passes over the batch)."""
        mid, rad = self._centre_radius()
        if weight.dim() == 2:
            m, r = F.linear(mid, weight, bias), F.linear(rad, weight.abs())
        else:  # a per-sample weight [B, out, in] (a folded specification)
            m = torch.bmm(weight, mid[:, :, None])[:, :, 0]
            r = torch.bmm(weight.abs(), rad[:, :, None])[:, :, 0]
            m = m if bias is None else m + bias
        return IntervalDomain(m - r, m + r)

    def conv(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
             padding: tuple[int, int]) -> "IntervalDomain":
        mid, rad = self._centre_radius()
        m = F.conv2d(mid, weight, bias, stride, padding)
        r = F.conv2d(rad, weight.abs(), None, stride, padding)
        return IntervalDomain(m - r, m + r)

    def affine(self, scale: torch.Tensor, shift: torch.Tensor) -> "IntervalDomain":
        """Elementwise ``x * scale + shift``: a non-negative scale (input normalisation) keeps the ends in order,
        two passes instead of the centre/radius form's six."""
        if bool((scale >= 0).all()):
            return IntervalDomain(torch.addcmul(shift, self.lo, scale), torch.addcmul(shift, self.hi, scale))
        return super().affine(scale, shift)

    def relu(self) -> "IntervalDomain":
        """``F.relu`` rather than ``clamp_min(0)``: the same values, and its backward is one op (``clamp_min``'s is
        three), 12% of an IBP training step on one thread (docs/performance.md).  At exactly 0 the gradient is 0
        here where ``clamp_min`` passed it: a subgradient either way."""
        return IntervalDomain(F.relu(self.lo), F.relu(self.hi))

    def add(self, other: "IntervalDomain") -> "IntervalDomain":
        return IntervalDomain(self.lo + other.lo, self.hi + other.hi)

    def tighten(self, lo: torch.Tensor, hi: torch.Tensor) -> "IntervalDomain":
        """Both this box and ``[lo, hi]`` are sound, so their intersection is."""
        return IntervalDomain(torch.maximum(self.lo, lo), torch.minimum(self.hi, hi))

    def concretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lo, self.hi
