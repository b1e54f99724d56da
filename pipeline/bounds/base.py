"""The interface every bound domain implements, the shared affine-map machinery, and the domain registry.

A domain state over-approximates the set of values one layer takes when the input ranges over a box.  States are
immutable: each method returns a new state.  Shapes: a state for a batch of ``B`` boxes describes tensors
``[B, *shape]`` (one sample's layer shape); :meth:`Domain.concretize` returns ``(lb, ub)`` of that shape.

Forward domains here keep a lower and an upper bound, each as a constant row ``[B, 1, *shape]`` and (for symbolic
domains) ``d`` coefficient rows ``[B, d, *shape]`` over the input variables (``None`` for intervals).  Constants and
coefficients are kept apart so that adding a bias never copies (or, in autograd, re-materialises) the big coefficient
tensors.  An affine map sends ``(lower, upper)`` to ``(W mid - |W| rad, W mid + |W| rad)`` with
``mid = (lower+upper)/2``, ``rad = (upper-lower)/2``, which equals the usual ``W+ lower + W- upper`` split with half
the matrix products; the bias goes to the constant only.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F

from pipeline.bounds.patches import PatchCoef, conv_rows, flatten_rows, linear_rows
from pipeline.utils.registry import Registry

__all__ = ["Domain", "RowDomain", "DOMAINS", "register_domain", "get_domain", "map_linear", "map_conv"]

D = TypeVar("D", bound="Domain")


class Domain(ABC):
    """Abstract bound domain: propagate through linear/conv/affine/flatten/relu/add, then concretize."""

    @classmethod
    @abstractmethod
    def from_box(cls: type[D], lo: torch.Tensor, hi: torch.Tensor) -> D:
        """The state of the input box ``lo <= x <= hi`` (``[B, *input_shape]``)."""

    @abstractmethod
    def linear(self: D, weight: torch.Tensor, bias: torch.Tensor | None) -> D: ...

    @abstractmethod
    def conv(self: D, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
             padding: tuple[int, int]) -> D: ...

    @abstractmethod
    def affine(self: D, scale: torch.Tensor, shift: torch.Tensor) -> D: ...

    @abstractmethod
    def flatten(self: D) -> D: ...

    @abstractmethod
    def relu(self: D) -> D: ...

    @abstractmethod
    def add(self: D, other: D) -> D: ...

    @abstractmethod
    def concretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Sound elementwise ``(lb, ub)`` of the current layer, each ``[B, *shape]``."""

    def concretize_lower(self) -> torch.Tensor:
        """The ``lb`` of :meth:`concretize` alone (domains override it where the upper bound costs extra work)."""
        return self.concretize()[0]


def map_linear(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``rows`` ``[B, R, in]`` through ``weight`` ``[out, in]`` or ``[B, out, in]`` (no bias) -> ``[B, R, out]``.

    Window-form rows (:class:`~pipeline.bounds.patches.PatchCoef`) come out dense."""
    if isinstance(rows, PatchCoef):
        return linear_rows(rows, weight)
    if weight.dim() == 2:
        return rows @ weight.t()
    return torch.einsum("bri,boi->bro", rows, weight)


def map_conv(rows: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
             padding: tuple[int, int]) -> torch.Tensor:
    """``rows`` ``[B, R, C, H, W]`` through a bias-free convolution -> ``[B, R, C', H', W']`` (window-form rows stay
    in window form while it is the smaller)."""
    if isinstance(rows, PatchCoef):
        return conv_rows(rows, weight, stride, padding)
    b, r = rows.shape[:2]
    out = F.conv2d(rows.reshape(b * r, *rows.shape[2:]), weight, None, stride, padding)
    return out.view(b, r, *out.shape[1:])


Parts = tuple[torch.Tensor, "torch.Tensor | None", torch.Tensor, "torch.Tensor | None"]


def _opt(f: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else f(t)


class RowDomain(Domain):
    """A forward domain stored as constant and coefficient rows of a lower and an upper bound; affine maps are
    shared here."""

    @abstractmethod
    def parts(self) -> Parts:
        """``(lower_const [B, 1, *shape], lower_coef [B, d, *shape] | None, upper_const, upper_coef)``."""

    @abstractmethod
    def with_parts(self: D, parts: Parts, op: Callable[[Domain], Domain]) -> D:
        """A new state from these parts; ``op`` replays the same layer on any companion state."""

    @abstractmethod
    def tighten(self: D, lo: torch.Tensor, hi: torch.Tensor) -> D:
        """This state with the extra sound knowledge ``lo <= x <= hi`` about the current layer."""

    def _midrad(self: D, f: Callable[[torch.Tensor], torch.Tensor], f_abs: Callable[[torch.Tensor], torch.Tensor],
                bias: torch.Tensor | None, op: Callable[[Domain], Domain]) -> D:
        lc, la, uc, ua = self.parts()

        def const(c: torch.Tensor) -> torch.Tensor:
            out = f(c)
            return out if bias is None else out + bias
        if lc is uc and la is ua:  # an exact affine function of the input so far: one product suffices
            c, a = const(lc), _opt(f, la)
            return self.with_parts((c, a, c, a), op)
        # fewest elementwise passes (they, not the products, dominate small layers): lerp is the midpoint
        mid_c, rad_c = const(torch.lerp(lc, uc, 0.5)), f_abs((uc - lc).mul_(0.5))
        if la is None or ua is None:
            return self.with_parts((mid_c - rad_c, None, mid_c + rad_c, None), op)
        mid_a, rad_a = f((la + ua) / 2), f_abs((ua - la) / 2)
        return self.with_parts((mid_c - rad_c, mid_a - rad_a, mid_c + rad_c, mid_a + rad_a), op)

    def linear(self: D, weight: torch.Tensor, bias: torch.Tensor | None) -> D:
        b = None if bias is None else (bias[:, None] if bias.dim() == 2 else bias)
        return self._midrad(lambda r: map_linear(r, weight), lambda r: map_linear(r, weight.abs()), b,
                            lambda s: s.linear(weight, bias))

    def conv(self: D, weight: torch.Tensor, bias: torch.Tensor | None, stride: tuple[int, int],
             padding: tuple[int, int]) -> D:
        b = None if bias is None else bias.view(1, 1, -1, 1, 1)
        return self._midrad(lambda r: map_conv(r, weight, stride, padding),
                            lambda r: map_conv(r, weight.abs(), stride, padding), b,
                            lambda s: s.conv(weight, bias, stride, padding))

    def affine(self: D, scale: torch.Tensor, shift: torch.Tensor) -> D:
        return self._midrad(lambda r: r * scale, lambda r: r * scale.abs(), shift, lambda s: s.affine(scale, shift))

    def flatten(self: D) -> D:
        lc, la, uc, ua = self.parts()

        if lc is uc and la is ua:
            c, a = flatten_rows(lc), _opt(flatten_rows, la)
            return self.with_parts((c, a, c, a), lambda s: s.flatten())
        return self.with_parts((flatten_rows(lc), _opt(flatten_rows, la), flatten_rows(uc), _opt(flatten_rows, ua)),
                               lambda s: s.flatten())


DOMAINS: Registry = Registry("bound domain")  # name (as params.yaml uses it) -> domain class


def register_domain(name: str) -> Callable[[type[D]], type[D]]:
    """Class decorator: make a domain available by the name used in params.yaml."""
    return DOMAINS.register(name)


def get_domain(name: str) -> type[Domain]:
    """The domain class registered as ``name`` (``ValueError`` naming the known ones otherwise)."""
    return DOMAINS.get(name)
