"""Wong, Schmidt, Metzen, Kolter (NeurIPS 2018), "Scaling provable adversarial defenses": the dual-network bound,
exact, or with its ℓ1 terms estimated by random Cauchy projections (a training loss, not a bound).

Threat model: the input box ``lo <= x <= hi`` (the L∞ ball ∩ [0, 1]: Wong et al.'s ``bounded_input``).

The bound.  Every unstable ReLU with pre-activation bounds ``[l, u]`` is relaxed by Wong & Kolter's lines ``d x`` and
``d (x - l)``, ``d = u / (u - l)`` (:func:`~pipeline.bounds.relu.relax_parallel`; stable ones are exact).  The lines
are parallel, so the relaxed network is an affine function of the input box and of one independent band variable
per unstable neuron: ``a = d x + h + h s`` with half band ``h = -d l / 2`` and ``s`` in [-1, 1].  The dual network's
objective for ``c @ z`` is the minimum of that function: the linear terms, minus the ℓ1 norm of the input
coefficients weighted by the box radius, plus, per ReLU layer, ``sum_i l_i [nu_i]_+ = ½ sum l nu - ½ sum |l nu|``
(a linear term and another ℓ1 norm).  The final bound on the margins is the backward pass of
:class:`~pipeline.bounds.backward.BackwardDomain` (``2 x 10`` rows: its ℓ1 norms are always exact) with the lines
fixed by the intermediate bounds.  ``backward_crown`` is the same backward pass with CROWN's adaptive lower slope
instead of ``d`` and interval-intersected intermediate bounds, so it is not this bound.

Intermediate bounds, layer by layer as in the paper: each pre-activation neuron needs the same ℓ1 norms for its own
back-substituted row.  :class:`ProjectionDomain` computes them as Wong et al.'s code does, *forward*: it carries the
centre (exact) and, per noise source (the input box; each ReLU layer's bands), rows pushed through the network's
linear maps with every ReLU replaced by its slope ``d``.  What is projected:

- exact (``projections=None``): the rows are the identity times the source's radius (``r`` for the input, ``h`` for a
  ReLU layer, a row only for neurons unstable for some sample of the batch), and the ℓ1 norm is ``sum |rows|``.  This
  is a zonotope (DeepZ with a fresh generator per unstable neuron); it is sound and on every neuron equals the dual
  network's bound and the LP's for the same relaxation and earlier bounds.
- projected (``projections=k``): the rows are ``k`` vectors of i.i.d. standard Cauchy entries times the source's
  radius, and the ℓ1 norm is estimated by the median of ``|rows|`` over the ``k`` rows (``sum_i a_i C_i`` is Cauchy
  with scale ``sum_i |a_i|``, and the median of its absolute value is that scale).  A source with at most ``k``
  candidate rows stays exact, as in Wong et al.'s code.  Cost: ``k`` rows per source instead of input dimensions +
  unstable neurons, i.e. linear in the network size.

NOT SOUND with projections: the median estimate can fall below the true ℓ1 norm, so intermediate bounds can be too
tight, unstable neurons can be taken for stable ones, and the "lower bound" can exceed the true minimum.  It is used
for the training loss only; certification uses the models' ``vra_domains``.  Draws come from the given
``torch.Generator`` (on another device, from a device generator seeded by it), so training stays reproducible.

Shapes: centre ``[B, *shape]``; rows ``[B, R, *shape]``, the sources' blocks concatenated along dim 1.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import torch

from pipeline.bounds.backward import BackwardDomain
from pipeline.bounds.base import Domain, Parts, RowDomain
from pipeline.bounds.relu import RelaxFn, relax_parallel

__all__ = ["ProjectionDomain", "WongDualDomain", "wong_domain", "median_l1", "cauchy_rows"]

_keys = itertools.count()


@dataclass(frozen=True)
class _Source:
    """One block of rows: the input box or one ReLU layer's bands."""
    key: int
    size: int
    exact: bool


def median_l1(rows: torch.Tensor) -> torch.Tensor:
    """Cauchy median estimate of an ℓ1 norm from projections ``rows`` ``[B, k, *shape]``: ``median_k |rows|``."""
    return rows.abs().median(1).values


def cauchy_rows(scale: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``k`` projections ``[B, k, *shape]`` of the diagonal ``scale`` ``[B, *shape]``: standard Cauchy times scale."""
    noise = torch.empty(scale.shape[0], k, *scale.shape[1:], dtype=scale.dtype, device=scale.device)
    return noise.cauchy_(generator=generator) * scale[:, None]


def _device_generator(gen: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    if gen is None or gen.device == device:
        return gen
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return torch.Generator(device=device).manual_seed(seed)


class ProjectionDomain(RowDomain):
    """Forward dual network: exact centre, and per source exact or Cauchy-projected ℓ1 rows (module docstring)."""
    projections: int | None = None
    generator: torch.Generator | None = None
    #: must return parallel lines (the bands are symmetric around a shifted centre)
    relax: RelaxFn = staticmethod(relax_parallel)

    def __init__(self, centre: torch.Tensor, rows: torch.Tensor, sources: tuple[_Source, ...],
                 rng: torch.Generator | None, clip: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.centre = centre
        self.rows = rows
        self.sources = sources
        self.rng = rng
        self.clip = clip
        self._const = centre[:, None]
        self._bounds: tuple[torch.Tensor, torch.Tensor] | None = None  # states are immutable: concretize once

    @classmethod
    def from_box(cls, lo: torch.Tensor, hi: torch.Tensor) -> "ProjectionDomain":
        rng = _device_generator(cls.generator, lo.device)
        rows, source = cls._source((hi - lo) / 2, rng)
        return cls((lo + hi) / 2, rows, (source,), rng)

    @classmethod
    def _source(cls, radius: torch.Tensor, rng: torch.Generator | None) -> tuple[torch.Tensor, _Source]:
        """Rows of a new noise source with per-neuron ``radius`` ``[B, *shape]``."""
        b, shape = radius.shape[0], radius.shape[1:]
        flat = radius.flatten(1)
        cols = (flat != 0).any(0).nonzero()[:, 0]
        if cls.projections is None or len(cols) <= cls.projections:
            rows = flat.new_zeros(b, len(cols), flat.shape[1])
            rows[:, torch.arange(len(cols), device=flat.device), cols] = flat[:, cols]
            return rows.view(b, len(cols), *shape), _Source(next(_keys), len(cols), True)
        rows = cauchy_rows(radius, cls.projections, rng)
        return rows, _Source(next(_keys), cls.projections, False)

    def parts(self) -> Parts:
        # identical lower/upper objects: RowDomain maps them as one exact affine function (one product per layer)
        return self._const, self.rows, self._const, self.rows

    def with_parts(self, parts: Parts, op: Callable[[Domain], Domain]) -> "ProjectionDomain":
        return type(self)(parts[0][:, 0], parts[1], self.sources, self.rng)

    def relu(self) -> "ProjectionDomain":
        lo, hi = self.concretize()
        line = self.relax(lo, hi)
        half_band = (line.upper_bias - line.lower_bias) / 2
        centre = line.lower_slope * self.centre + line.lower_bias + half_band
        new_rows, source = self._source(half_band, self.rng)
        rows = torch.cat([self.rows * line.lower_slope[:, None], new_rows], 1)
        return type(self)(centre, rows, self.sources + (source,), self.rng)

    def _aligned(self, sources: tuple[_Source, ...]) -> torch.Tensor:
        """This state's rows laid out for ``sources`` (zero blocks for sources it does not carry)."""
        if sources == self.sources:
            return self.rows
        blocks, start = {}, 0
        for s in self.sources:
            blocks[s.key] = self.rows[:, start:start + s.size]
            start += s.size
        zeros = self.rows.new_zeros
        return torch.cat([blocks[s.key] if s.key in blocks else zeros(self.rows.shape[0], s.size,
                                                                       *self.rows.shape[2:]) for s in sources], 1)

    def add(self, other: "ProjectionDomain") -> "ProjectionDomain":
        mine = {s.key for s in self.sources}
        sources = self.sources + tuple(s for s in other.sources if s.key not in mine)
        return type(self)(self.centre + other.centre, self._aligned(sources) + other._aligned(sources), sources,
                          self.rng)

    def tighten(self, lo: torch.Tensor, hi: torch.Tensor) -> "ProjectionDomain":
        if self.clip is not None:
            lo, hi = torch.maximum(lo, self.clip[0]), torch.minimum(hi, self.clip[1])
        return type(self)(self.centre, self.rows, self.sources, self.rng, (lo, hi))

    def concretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._bounds is None:
            self._bounds = self._concretize()
        return self._bounds

    def _concretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        radius = torch.zeros_like(self.centre)
        start = 0
        for s in self.sources:
            block = self.rows[:, start:start + s.size]
            start += s.size
            if s.size:
                radius = radius + (block.abs().sum(1) if s.exact else median_l1(block))
        lb, ub = self.centre - radius, self.centre + radius
        if self.clip is not None:
            lb, ub = torch.maximum(lb, self.clip[0]), torch.minimum(ub, self.clip[1])
        return lb, ub


class WongDualDomain(BackwardDomain):
    """Wong & Kolter's dual-network bound: backward pass with slope ``d`` for both lines, intermediate bounds from
    the exact forward dual network (:class:`ProjectionDomain`).  Sound; not intersected with anything."""
    relax = staticmethod(relax_parallel)
    companion = ProjectionDomain
    intermediate = "companion"

    def concretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._backward_bounds()

    def concretize_lower(self) -> torch.Tensor:
        return self._backward_bounds(upper=False)[0]


def wong_domain(projections: int | None = None,
                generator: torch.Generator | None = None) -> type[WongDualDomain]:
    """The dual-network bound with exact (``projections=None``, sound) or ``projections`` Cauchy-projected
    intermediate bounds drawn from ``generator`` (a training loss, NOT sound)."""
    if projections is None:
        return WongDualDomain
    if isinstance(projections, bool) or not isinstance(projections, int) or projections < 1:
        raise ValueError(f"projections: expected an integer >= 1 or None, got {projections!r}")
    companion = type(f"ProjectionDomain{projections}", (ProjectionDomain,),
                     {"projections": projections, "generator": generator})
    return type(f"ProjectedWongDualDomain{projections}", (WongDualDomain,), {"companion": companion})
