"""Backward linear relaxation (CROWN, Zhang et al. 2018; the same bound as Wong & Kolter's dual network).

Propagation forward only records the computation graph (and a companion interval state); a bound on ``A @ z`` for a
node ``z`` is obtained by pushing ``A`` ``[B, m, *shape]`` backwards through the graph: affine layers transpose,
a ReLU with pre-activation bounds ``[l, u]`` is replaced by its relaxation lines (the lower line where ``A >= 0``, the
upper one where ``A < 0``), an addition hands ``A`` to both operands, and at the input box ``x = c + r t`` the result
is ``A c - |A| r`` plus the accumulated constants.  Upper bounds are lower bounds of ``-A``.

Intermediate bounds: a forward ``companion`` domain runs alongside and gives every ReLU's pre-activation bounds;
with ``intermediate = "backward"`` they are further intersected with bounds from the same backward pass run from
that layer (full CROWN, cost quadratic in depth).  Registered variants:

- ``backward``: companion = symbolic linear relaxation (one forward pass gives all intermediate bounds);
- ``backward_crown``: companion = intervals, layer-by-layer backward intermediate bounds (full CROWN);
- ``backward_ibp``: companion = intervals only (CROWN-IBP's bound; cheap enough to train with).

ReLUs whose input is an affine function of the input get exact bounds from the companion without a backward pass.
The relaxation is the domain's ``relax`` (CROWN's adaptive lower slope by default).  Nothing is optimised (no
alpha-CROWN).  The final bound is intersected with the companion's, so it is never looser than it.
"""
from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from pipeline.bounds.base import Domain, RowDomain, register_domain
from pipeline.bounds.interval import IntervalDomain
from pipeline.bounds.kernels import batched_dot, relu_back_kernel
from pipeline.bounds.relu import RelaxFn, relax_adaptive
from pipeline.bounds.symbolic import SymbolicLinearDomain

__all__ = ["BackwardDomain", "BackwardCrownDomain", "BackwardIBPDomain"]

#: back(A) -> (A for each parent, constant term [B, m])
BackFn = Callable[[torch.Tensor], tuple[list[torch.Tensor], torch.Tensor | float]]

_ids = itertools.count()


@dataclass(eq=False)
class _Node:
    parents: tuple["_Node", ...]
    shape: tuple[int, ...]
    back: BackFn | None
    nonlinear: bool  # a ReLU lies between the input and this node
    idx: int = field(default_factory=lambda: next(_ids))


def _flat_sum(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(2).sum(-1)


def lower_bound(node: _Node, a: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Sound lower bound ``[B, m]`` of ``a @ node`` over the input box; ``a`` is ``[B, m, *node.shape]``."""
    pending: dict[_Node, torch.Tensor] = {node: a}
    heap = [(-node.idx, node)]
    const: torch.Tensor | float = 0.0
    result = None
    while heap:
        _, n = heapq.heappop(heap)
        a_n = pending.pop(n)
        if n.back is None:  # the input node
            flat = a_n.flatten(2)
            result = (flat * centre[:, None]).sum(-1) - (flat.abs() * radius[:, None]).sum(-1)
            continue
        parent_as, c = n.back(a_n)
        const = const + c
        for p, a_p in zip(n.parents, parent_as):
            if p in pending:
                pending[p] = pending[p] + a_p
            else:
                pending[p] = a_p
                heapq.heappush(heap, (-p.idx, p))
    assert result is not None, "the backward pass never reached the input node"
    return result + const


def _linear_back(weight: torch.Tensor, bias: torch.Tensor | None) -> BackFn:
    def back(a: torch.Tensor):
        if weight.dim() == 2:
            a_in = a @ weight
            c = 0.0 if bias is None else a @ bias
        else:
            a_in = torch.einsum("bmo,boi->bmi", a, weight)
            c = 0.0 if bias is None else torch.einsum("bmo,bo->bm", a, bias)
        return [a_in], c
    return back


def _conv_back(weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int], padding: tuple[int, int],
               in_shape: tuple[int, ...]) -> BackFn:
    k = weight.shape[2:]

    def back(a: torch.Tensor):
        b, m = a.shape[:2]
        out_hw = a.shape[3:]
        extra = [in_shape[1 + i] - ((out_hw[i] - 1) * stride[i] - 2 * padding[i] + k[i]) for i in range(2)]
        a_in = F.conv_transpose2d(a.reshape(b * m, *a.shape[2:]), weight, None, stride, padding, tuple(extra))
        c = 0.0 if bias is None else torch.einsum("bmchw,c->bm", a, bias)
        return [a_in.view(b, m, *in_shape)], c
    return back


@register_domain("backward")
class BackwardDomain(Domain):
    relax: RelaxFn = staticmethod(relax_adaptive)
    companion: type[RowDomain] = SymbolicLinearDomain
    intermediate: str = "companion"

    def __init__(self, node: _Node, box: RowDomain, centre: torch.Tensor, radius: torch.Tensor):
        self.node = node
        self.box = box
        self.centre = centre
        self.radius = radius

    @classmethod
    def from_box(cls, lo: torch.Tensor, hi: torch.Tensor) -> "BackwardDomain":
        node = _Node((), tuple(lo.shape[1:]), None, False)
        return cls(node, cls.companion.from_box(lo, hi), ((lo + hi) / 2).flatten(1), ((hi - lo) / 2).flatten(1))

    def _child(self, shape: tuple[int, ...], back: BackFn, box: RowDomain, nonlinear: bool = False,
               parents: tuple[_Node, ...] | None = None) -> "BackwardDomain":
        parents = (self.node,) if parents is None else parents
        node = _Node(parents, shape, back, nonlinear or any(p.nonlinear for p in parents))
        return type(self)(node, box, self.centre, self.radius)

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None) -> "BackwardDomain":
        box = self.box.linear(weight, bias)
        return self._child(_shape(box), _linear_back(weight, bias), box)

    def conv(self, weight, bias, stride, padding) -> "BackwardDomain":
        box = self.box.conv(weight, bias, stride, padding)
        return self._child(_shape(box), _conv_back(weight, bias, stride, padding, self.node.shape), box)

    def affine(self, scale: torch.Tensor, shift: torch.Tensor) -> "BackwardDomain":
        def back(a: torch.Tensor):
            return [a * scale], _flat_sum(a * shift)
        return self._child(self.node.shape, back, self.box.affine(scale, shift))

    def flatten(self) -> "BackwardDomain":
        in_shape = self.node.shape

        def back(a: torch.Tensor):
            return [a.reshape(*a.shape[:2], *in_shape)], 0.0
        box = self.box.flatten()
        return self._child(_shape(box), back, box)

    def add(self, other: "BackwardDomain") -> "BackwardDomain":
        def back(a: torch.Tensor):
            return [a, a], 0.0
        return self._child(self.node.shape, back, self.box.add(other.box), parents=(self.node, other.node))

    def _backward_bounds(self, upper: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, n = self.centre.shape[0], math.prod(self.node.shape)
        eye = torch.eye(n, dtype=self.centre.dtype, device=self.centre.device)
        rows = torch.cat([eye, -eye]) if upper else eye
        a = rows.expand(b, len(rows), n).reshape(b, len(rows), *self.node.shape)
        res = lower_bound(self.node, a, self.centre, self.radius)
        lb = res[:, :n].view(b, *self.node.shape)
        return lb, (-res[:, n:].view(b, *self.node.shape) if upper else None)

    def relu(self) -> "BackwardDomain":
        box = self.box
        lo, hi = box.concretize()
        if self.intermediate == "backward" and self.node.nonlinear:
            blo, bhi = self._backward_bounds()
            lo, hi = torch.maximum(lo, blo), torch.minimum(hi, bhi)
            box = box.tighten(lo, hi)
        line = self.relax(lo, hi)

        lower_bias = bool(line.lower_bias.detach().ne(0).any())  # 0 for every relaxation here; kept general
        kernel = relu_back_kernel()  # eager, or compiled inside training's compiled_kernels() block

        def back(a: torch.Tensor):
            # the lower line where a >= 0, the upper one where a < 0; the intercepts as batched dot products
            # (no [B, m, *shape] temporaries for them)
            a_in, const = kernel(a, line.lower_slope, line.upper_slope, line.upper_bias)
            if lower_bias:
                const = const + batched_dot(a.clamp_min(0), line.lower_bias)
            return [a_in], const
        return self._child(self.node.shape, back, box.relu(), nonlinear=True)

    def concretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        clo, chi = self.box.concretize()
        if not self.node.nonlinear:
            return clo, chi
        lb, ub = self._backward_bounds()
        return torch.maximum(lb, clo), torch.minimum(ub, chi)

    def concretize_lower(self) -> torch.Tensor:
        """The lower bound alone: half the backward rows of :meth:`concretize`."""
        clo = self.box.concretize_lower()
        if not self.node.nonlinear:
            return clo
        return torch.maximum(self._backward_bounds(upper=False)[0], clo)


def _shape(box: RowDomain) -> tuple[int, ...]:
    return tuple(box.parts()[0].shape[2:])


@register_domain("backward_crown")
class BackwardCrownDomain(BackwardDomain):
    """Full CROWN: every intermediate bound by its own backward pass (tightest here, cost quadratic in depth)."""
    companion = IntervalDomain
    intermediate = "backward"


@register_domain("backward_ibp")
class BackwardIBPDomain(BackwardDomain):
    """Backward bounds on the output with interval intermediate bounds (CROWN-IBP's bound; cheap enough to train)."""
    companion = IntervalDomain
