"""DiffAI's hybrid zonotope domain (Mirman, Gehr, Vechev, ICML 2018, "Differentiable Abstract Interpretation for
Provably Robust Neural Networks").

State ``(head, beta, errors)`` plus a companion interval: every neuron's value is
``head + beta * b + sum_g errors[g] * e_g`` with one private box symbol ``b`` in [-1, 1] per neuron (the "hybrid" box
part) and generators ``e_g`` in [-1, 1] shared by all neurons.  Shapes: ``head``, ``beta`` ``[B, *shape]`` (``beta``
is ``None`` until a ReLU adds box error); ``errors`` ``[B, G, *shape]`` with ``G`` = input dimensions: the input box
``x = c + r * t`` gets one generator per pixel (DiffAI's ``HBox.box``), and the hybrid domain never adds generators:
ReLU error goes into ``beta``.  Cost per layer: ``G`` + 2 rows (784 on MNIST, 3072 on CIFAR), like
``symbolic_linear``.

Transformers: affine maps send ``head -> W head + b``, ``beta -> |W| beta`` (box symbols are independent per neuron),
``errors -> W errors``; a residual addition adds all three.  ReLU: with concrete pre-activation bounds ``[l, u]``, a
DiffAI ReLU transformer is a pair of *parallel* lines ``s x + lower_bias <= relu(x) <= s x + upper_bias`` on
``[l, u]`` (a :class:`~pipeline.bounds.relu.Relaxation` with equal slopes), giving
``head -> s head + (lower_bias + upper_bias) / 2``, ``beta -> |s| beta + (upper_bias - lower_bias) / 2``,
``errors -> s errors``.  Variants (``relax``):

- :func:`relax_hsmooth` (default, registered as ``hybrid_zonotope``): DiffAI's ``hSmooth``.  Source: the authors'
  code (github.com/eth-sri/diffai, ``domains.py``, ``HSmooth.creluSmooth``, ICML-2018 version): for an unstable
  neuron, the convex combination with weight ``t = -l / (u - l)`` of the slope-1 parallelogram ``[x, x - l]`` and
  the box ``[0, u]``, i.e. slope ``lambda = u / (u - l)`` and lines ``lambda x`` and ``lambda x - 2 lambda l``.
  (DiffAI computes ``t = l- / (u+ + l- + 1e-4)`` to avoid 0/0; we use the exact ratio with a safe denominator, so
  stable neurons stay exact.  Any ``t`` in [0, 1] is sound.)
- :func:`relax_hswitch`: DiffAI's ``hSwitch`` (``creluSwitch``): the box ``[0, u]`` if ``-l > u``, else ``[x, x - l]``.
- :func:`~pipeline.bounds.relu.relax_parallel`: the DeepZ zonotope ReLU (Singh et al., NeurIPS 2018; DiffAI's later
  ``creluNIPS``): slope ``lambda``, new error ``mu = -lambda l / 2`` added to the box part
  (``head -> lambda head + mu``, ``beta -> lambda beta + mu``).  Its band has half hSmooth's width.

``HYBRID_RELUS`` maps these names to domain classes; only the hSmooth one is registered (the others are reachable by
class, e.g. from the ``diffai`` method's ``relu`` parameter).  The "z" variants of DiffAI (box error turned into new
generators after every ReLU) are not implemented.

Companion interval (as every non-interval domain here, docs/bounds.md): an IBP state runs alongside; the ReLU
relaxes on the intersection of both bounds (a neuron either proves stable is exact) and :meth:`concretize` returns the
intersection, so the bounds are never looser than IBP.  DiffAI itself has no companion; it only tightens.
Threat model: whatever box ``from_box`` is given (here the L∞ ball ∩ [0, 1], :mod:`pipeline.bounds.verify`).
"""
from __future__ import annotations

from typing import Callable

import torch

from pipeline.bounds.base import Domain, map_conv, map_linear, register_domain
from pipeline.bounds.interval import IntervalDomain
from pipeline.bounds.relu import Relaxation, RelaxFn, relax_concretize, relax_parallel
from pipeline.bounds.symbolic import input_parts

__all__ = ["HybridZonotopeDomain", "HybridZonotopeHSwitch", "HybridZonotopeDeepZ", "HYBRID_RELUS", "relax_hsmooth",
           "relax_hswitch"]


def relax_hsmooth(l: torch.Tensor, u: torch.Tensor) -> Relaxation:
    """DiffAI's hSmooth: slope ``u/(u-l)`` like DeepZ, band ``[lambda x, lambda x - 2 lambda l]`` (twice DeepZ's)."""
    p = relax_parallel(l, u)
    return Relaxation(p.lower_slope, p.lower_bias, p.upper_slope, 2 * p.upper_bias)


def relax_hswitch(l: torch.Tensor, u: torch.Tensor) -> Relaxation:
    """DiffAI's hSwitch: box ``[0, u]`` where ``-l > u``, else the slope-1 band ``[x, x - l]``."""
    box = relax_concretize(l, u)
    identity = (l < 0) & (u > 0) & (u >= -l)
    slope = torch.where(identity, torch.ones_like(l), box.lower_slope)
    upper = torch.where(identity, -l, box.upper_bias)
    return Relaxation(slope, torch.zeros_like(l), slope, upper)


@register_domain("hybrid_zonotope")
class HybridZonotopeDomain(Domain):
    #: a relaxation with parallel lines (lower_slope == upper_slope); see the module docstring
    relax: RelaxFn = staticmethod(relax_hsmooth)

    def __init__(self, head: torch.Tensor, beta: torch.Tensor | None, errors: torch.Tensor,
                 companion: IntervalDomain):
        self.head = head
        self.beta = beta
        self.errors = errors
        self.companion = companion

    @classmethod
    def from_box(cls, lo: torch.Tensor, hi: torch.Tensor) -> "HybridZonotopeDomain":
        centre, generators = input_parts(lo, hi)
        return cls(centre[:, 0], None, generators, IntervalDomain(lo, hi))

    def _affine(self, f: Callable[[torch.Tensor], torch.Tensor], f_abs: Callable[[torch.Tensor], torch.Tensor],
                bias: torch.Tensor | None, op: Callable[[Domain], Domain]) -> "HybridZonotopeDomain":
        head = f(self.head[:, None])[:, 0]
        head = head if bias is None else head + bias
        beta = None if self.beta is None else f_abs(self.beta[:, None])[:, 0]
        return type(self)(head, beta, f(self.errors), op(self.companion))

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None) -> "HybridZonotopeDomain":
        return self._affine(lambda r: map_linear(r, weight), lambda r: map_linear(r, weight.abs()), bias,
                            lambda s: s.linear(weight, bias))

    def conv(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
             padding: tuple[int, int]) -> "HybridZonotopeDomain":
        return self._affine(lambda r: map_conv(r, weight, stride, padding),
                            lambda r: map_conv(r, weight.abs(), stride, padding),
                            None if bias is None else bias.view(-1, 1, 1),
                            lambda s: s.conv(weight, bias, stride, padding))

    def affine(self, scale: torch.Tensor, shift: torch.Tensor) -> "HybridZonotopeDomain":
        return self._affine(lambda r: r * scale, lambda r: r * scale.abs(), shift, lambda s: s.affine(scale, shift))

    def flatten(self) -> "HybridZonotopeDomain":
        beta = None if self.beta is None else self.beta.flatten(1)
        return type(self)(self.head.flatten(1), beta, self.errors.flatten(2), self.companion.flatten())

    def relu(self) -> "HybridZonotopeDomain":
        lo, hi = self.concretize()  # intersected with the companion: stability is decided on both
        line = self.relax(lo, hi)
        slope = line.lower_slope
        half_band = (line.upper_bias - line.lower_bias) / 2
        head = slope * self.head + line.lower_bias + half_band
        beta = half_band if self.beta is None else slope.abs() * self.beta + half_band
        return type(self)(head, beta, self.errors * slope[:, None],
                          IntervalDomain(lo.clamp_min(0), hi.clamp_min(0)))

    def add(self, other: "HybridZonotopeDomain") -> "HybridZonotopeDomain":
        betas = [b for b in (self.beta, other.beta) if b is not None]
        beta = None if not betas else betas[0] if len(betas) == 1 else betas[0] + betas[1]
        return type(self)(self.head + other.head, beta, self.errors + other.errors,
                          self.companion.add(other.companion))

    def tighten(self, lo: torch.Tensor, hi: torch.Tensor) -> "HybridZonotopeDomain":
        """The same zonotope with extra sound bounds ``[lo, hi]`` on the current layer (kept in the companion)."""
        return type(self)(self.head, self.beta, self.errors, self.companion.tighten(lo, hi))

    def concretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        radius = self.errors.abs().sum(1)
        if self.beta is not None:
            radius = radius + self.beta
        return (torch.maximum(self.head - radius, self.companion.lo),
                torch.minimum(self.head + radius, self.companion.hi))


class HybridZonotopeHSwitch(HybridZonotopeDomain):
    """The hybrid zonotope with DiffAI's hSwitch ReLU (not registered)."""
    relax = staticmethod(relax_hswitch)


class HybridZonotopeDeepZ(HybridZonotopeDomain):
    """The hybrid zonotope with the DeepZ ReLU, error to the box part (not registered)."""
    relax = staticmethod(relax_parallel)


#: ReLU transformer name (the ``diffai`` method's ``relu`` parameter) -> hybrid zonotope domain class
HYBRID_RELUS: dict[str, type[HybridZonotopeDomain]] = {
    "hsmooth": HybridZonotopeDomain, "hswitch": HybridZonotopeHSwitch, "deepz": HybridZonotopeDeepZ}
