"""A proven bound on the float rounding error of every registered domain's margin lower bound.

Every domain computes its bounds in a working dtype (float64 for certification by default).  In exact arithmetic each
one is a sound lower bound of the margin over the input box; in floating point it can exceed the true minimum by the
accumulated rounding error, which grows with the magnitudes involved: a net whose logits are ``1e13`` and cancel to
a margin of ``-0.001`` is "verified" with a fixed absolute threshold (``tests/test_rounding_soundness.py``).

:func:`rounding_bounds` bounds that error per domain from the op list and the input box alone (domain internals are
not read).  One float64 *shadow* pass over the ops carries, per sample and neuron:

- ``lo, hi``: interval bounds (IBP) of the layer, which with the error bound enclose the real values;
- ``plo, phi``: an interval enclosing the range of every domain's stored representation (symbolic equations,
  zonotope, interval): IBP without the ReLU clamp on unstable neurons, plus DiffAI's hSmooth band;
- ``err``: the rounding-error bound, propagated through affine ops by ``|W|`` and injected by every op as
  ``gamma_n * (|W| rho + |b|)`` (``rho = max(|plo|, |phi|) + err``, ``n`` = the op's dot-product and sum lengths);
- ``acc``, ``acc_crown``: the relaxation errors a backward pass collects from earlier ReLUs, pushed by ``|W|``.

At a ReLU a neuron whose interval bounds prove it dead (``hi + 2 err < 0``) or active (``lo - 2 err > 0``) is exact in
every domain and in the real network: its error is dropped (dead) or passed unchanged (active).  Any other neuron
may be mis-decided within the error, which can double a symbolic domain's error (``2 err + delta``; intervals:
``err + delta``).  With ``u`` the dtype's unit roundoff, ``gamma_n = n u / (1 - n u)`` and ``K = 4`` a safety factor,
the deduction at the output (the margins) is ``K (err + gamma_{2d+c} rho)`` for forward domains, ``K (acc + 2 err +
...)`` for one backward pass (``backward``, ``backward_ibp``) and ``K (acc_crown + 2 err + ...)`` for backward
intermediate bounds (``backward_crown``).  The derivation is in docs/bounds.md ("Rounding: what a certificate
guarantees").

Guarantee: a lower bound ``lb`` that the domain computes in that dtype on this box satisfies
``min margin >= lb - E`` for the real-arithmetic function of the stored weights over the real input box (the L∞ ball,
not its rounded ends).  :func:`~pipeline.bounds.verify.verify` certifies only ``max_d (lb_d - E_d) > margin_tol``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.bounds.base import Domain
from pipeline.bounds.graph import ChannelAffine, Conv, Flatten, Linear, Op, ReLU, Residual, fold_spec, to_ops

__all__ = ["SAFETY_FACTOR", "unit_roundoff", "gamma", "family", "Shadow", "shadow", "rounding_bounds", "rounding_bound",
           "margin_rounding_bounds", "margin_rounding_bound"]

#: multiplies the derived bound (rounding of the shadow pass itself, constant-count roundings not itemised)
SAFETY_FACTOR = 4.0
#: roundings charged per op on top of its dot-product and sum lengths (bias add, centre/radius split, ReLU slopes and
#: intercepts, folded normalisation/BatchNorm/spec, the accumulation of a backward pass's constants)
_C = 32


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u``: half the machine epsilon of ``dtype`` (float64: 2^-53, float32: 2^-24)."""
    if not dtype.is_floating_point:
        raise TypeError(f"rounding bounds need a floating dtype, got {dtype}")
    return torch.finfo(dtype).eps / 2


def _tiny(u: float) -> float:
    """The smallest normal number of the dtype with unit roundoff ``u``: one underflowing product or sum (also with
    flush-to-zero) is off by less than this, absolutely."""
    for dt in (torch.float64, torch.float32, torch.bfloat16, torch.float16):
        if u <= unit_roundoff(dt):
            return torch.finfo(dt).tiny
    return torch.finfo(torch.float16).tiny


def gamma(n: int, u: float) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)`` (``inf`` once ``n u >= 1``): a dot product of length ``n`` summed in any
    order, with or without FMA, is off by at most ``gamma_n`` times the dot product of the absolute values."""
    nu = n * u
    return math.inf if nu >= 1 else nu / (1 - nu)


@dataclass
class Shadow:
    """The shadow pass at one op's output, each tensor ``[B, *shape]`` (float64); see the module docstring."""
    lo: torch.Tensor
    hi: torch.Tensor
    plo: torch.Tensor
    phi: torch.Tensor
    err: torch.Tensor
    #: sum over earlier ReLUs of their relaxation error pushed here by ``|W|`` (one backward pass's violations);
    #: ``None`` when no backward domain asks for it
    acc: torch.Tensor | None
    #: the same for backward passes whose intermediate bounds are themselves backward passes (``backward_crown``)
    acc_crown: torch.Tensor | None
    relus: int
    d: int
    u: float
    #: ``False`` for domains built on interval bounds only (``interval``, ``backward_ibp``, ``backward_crown``): their
    #: representation is the interval and a mis-decided ReLU cannot double the error
    symbolic: bool = True

    @property
    def rho(self) -> torch.Tensor:
        """Bound on the absolute value of everything any domain stores for this layer (and of the real values)."""
        return torch.maximum(self.plo.abs(), self.phi.abs()) + self.err

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.lo, self.hi, self.plo, self.phi, self.err, self.acc, self.acc_crown

    def with_tensors(self, tensors, relus: int | None = None) -> "Shadow":
        return Shadow(*tensors, self.relus if relus is None else relus, self.d, self.u, self.symbolic)


def _ibp(lo: torch.Tensor, hi: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor],
         f_abs: Callable[[torch.Tensor], torch.Tensor], bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    c = f((lo + hi) / 2)
    c = c if bias is None else c + bias
    r = f_abs((hi - lo) / 2)
    return c - r, c + r


def _affine(s: Shadow, f, f_abs, bias: torch.Tensor | None, n_dot: int, n_sum: int,
            sum_mag: torch.Tensor | None) -> Shadow:
    """An affine op: ``f`` applies the map's linear part, ``f_abs`` its absolute values; ``n_dot`` bounds the length
    of every dot product of the map (forward: fan-in; backward passes: fan-out), ``n_sum`` the length of the sum
    that folds ``sum_mag`` (the magnitude of the bias/shift) into a backward pass's constant."""
    lo, hi = _ibp(s.lo, s.hi, f, f_abs, bias)
    plo, phi = (lo, hi) if s.plo is s.lo and s.phi is s.hi else _ibp(s.plo, s.phi, f, f_abs, bias)
    fresh = gamma(n_dot + _C, s.u) * f_abs(s.rho) + (n_dot + n_sum + _C) * _tiny(s.u)
    if sum_mag is not None:
        fresh = fresh + gamma(n_sum + _C, s.u) * sum_mag
    return s.with_tensors((lo, hi, plo, phi, f_abs(s.err) + fresh, _opt(f_abs, s.acc), _opt(f_abs, s.acc_crown)))


def _opt(f: Callable[[torch.Tensor], torch.Tensor], t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else f(t)


def _f64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to(torch.float64)


def _step(op: Op, ref: Op, s: Shadow) -> Shadow:
    if isinstance(op, Linear):
        w, b = _f64(op.weight), _f64(op.bias)

        def lin(m: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
            return (lambda t: t @ m.t()) if m.dim() == 2 else (lambda t: torch.einsum("bi,boi->bo", t, m))
        return _affine(s, lin(w), lin(w.abs()), b, w.shape[-1] + w.shape[-2], w.shape[-2],
                       None if b is None else b.abs())
    if isinstance(op, Conv):
        w, b = _f64(op.weight), _f64(op.bias)

        def conv(m: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda t: F.conv2d(t, m, None, op.stride, op.padding)
        bias = None if b is None else b.view(-1, 1, 1)
        out_numel = F.conv2d(s.lo[:1], w, None, op.stride, op.padding)[0].numel()
        return _affine(s, conv(w), conv(w.abs()), bias, (w.shape[0] + w.shape[1]) * w.shape[2] * w.shape[3],
                       out_numel, None if bias is None else bias.abs())
    if isinstance(op, ChannelAffine):
        scale, shift = _f64(op.scale), _f64(op.shift)
        shift_mag = shift.abs()
        if isinstance(ref, ChannelAffine):  # BatchNorm: the folded shift may cancel; charge its terms
            shift_mag = torch.maximum(shift_mag, _f64(ref.shift).abs())
        return _affine(s, lambda t: t * scale, lambda t: t * scale.abs(), shift, 1, s.lo[0].numel(), shift_mag)
    if isinstance(op, Flatten):
        flat = tuple(_opt(lambda t: t.flatten(1), t) for t in s.tensors())
        if s.plo is s.lo and s.phi is s.hi:
            flat = flat[:2] + flat[:2] + flat[4:]
        return s.with_tensors(flat)
    if isinstance(op, ReLU):
        return _relu(s)
    if isinstance(op, Residual):
        ref_main = ref.main if isinstance(ref, Residual) else op.main
        ref_short = ref.shortcut if isinstance(ref, Residual) else op.shortcut
        a, c = _propagate(op.main, ref_main, s), _propagate(op.shortcut, ref_short, s)
        summed = tuple(None if x is None else x + z for x, z in zip(a.tensors(), c.tensors()))
        if not s.symbolic:
            summed = summed[:2] + summed[:2] + summed[4:]
        out = s.with_tensors(summed, a.relus + c.relus - s.relus)
        out.err = out.err + gamma(2, s.u) * (a.rho + c.rho) + _tiny(s.u)
        return out
    raise TypeError(f"no rounding model for op {op!r}")


def _relu(s: Shadow) -> Shadow:
    zero = torch.zeros_like(s.lo)
    dead = s.hi + 2 * s.err < 0  # every domain decides dead, and the real neuron is dead: exact
    active = s.lo - 2 * s.err > 0  # every domain decides active, and the real neuron is active: exact
    unstable = ~(dead | active)
    neg = (-s.lo).clamp_min(0) + 2 * s.err  # bounds |l| of the lower bound any domain relaxes with
    n = s.lo[0].numel()
    # rounding of concretisations (d terms), slopes/intercepts, and a backward pass's intercept sum (n terms)
    delta = gamma(2 * s.d + _C, s.u) * s.rho + gamma(n + _C, s.u) * 2 * neg + (2 * s.d + n + _C) * _tiny(s.u)
    lo, hi = s.lo.clamp_min(0), s.hi.clamp_min(0)
    if s.symbolic:
        plo = torch.where(dead, zero, torch.where(active, s.plo, s.plo.clamp_max(0)))
        phi = torch.where(dead, zero, torch.where(active, s.phi, s.phi.clamp_min(0) + 2 * neg))  # hSmooth's band
        grown = 2 * s.err + delta  # a mis-decided neuron: see docs/bounds.md
    else:
        plo, phi = lo, hi
        grown = s.err + delta
    err = torch.where(dead, zero, torch.where(unstable, grown, s.err))
    # a backward pass through this layer: the relaxation's violation (the intermediate bound's error, err for a
    # companion, the backward bound's own error for backward intermediate bounds) plus its rounding
    violation = s.err + delta
    violation_crown = None if s.acc_crown is None else s.acc_crown + 2 * s.err + delta
    acc = None if s.acc is None else torch.where(dead, zero, s.acc + torch.where(unstable, violation, zero))
    acc_crown = None if s.acc_crown is None else \
        torch.where(dead, zero, s.acc_crown + torch.where(unstable, violation_crown, zero))
    return s.with_tensors((lo, hi, plo, phi, err, acc, acc_crown), s.relus + 1)


def _propagate(ops: Sequence[Op], refs: Sequence[Op], s: Shadow) -> Shadow:
    for op, ref in zip(ops, refs, strict=True):
        s = _step(op, ref, s)
    return s


@torch.no_grad()
def shadow(ops: list[Op], lo: torch.Tensor, hi: torch.Tensor, u: float, ref_ops: list[Op] | None = None,
           symbolic: bool = True, kinds: Sequence[str] = ("forward", "backward", "backward_intermediate")) -> Shadow:
    """The shadow pass of the box ``[lo, hi]`` ``[B, *shape]`` (as given to the domains) through ``ops``, for unit
    roundoff ``u``; ``symbolic=False`` for the interval-based family only (see :class:`Shadow`).  ``ref_ops`` (same
    structure) may supply larger shift magnitudes for ChannelAffine ops that fold a cancelling difference
    (BatchNorm's ``beta - mean * scale``).  ``kinds``: the final-bound kinds needed (unneeded accumulators are not
    computed)."""
    lo, hi = _f64(lo), _f64(hi)
    m0 = torch.maximum(lo.abs(), hi.abs())
    d = math.prod(lo.shape[1:])
    # the rounded box ends (x -+ eps) and the d-term input sums of every concretisation and backward pass
    err0 = 4 * u * (m0 + (hi - lo)) + gamma(2 * d + _C, u) * m0 + (2 * d + _C) * _tiny(u)
    acc = torch.zeros_like(lo) if "backward" in kinds else None
    acc_crown = torch.zeros_like(lo) if "backward_intermediate" in kinds else None
    return _propagate(ops, ref_ops if ref_ops is not None else ops,
                      Shadow(lo, hi, lo, hi, err0, acc, acc_crown, 0, d, u, symbolic))


#: how a domain turns its shadow pass into the error of its final bound
FORWARD, BACKWARD, BACKWARD_INTERMEDIATE = "forward", "backward", "backward_intermediate"


def family(domain: type[Domain]) -> tuple[bool, str] | None:
    """``(symbolic, kind)`` for an analysed domain: which shadow pass covers it and how its final bound is formed
    (``FORWARD``, ``BACKWARD``, ``BACKWARD_INTERMEDIATE``; docs/bounds.md); ``None`` for a domain the derivation
    does not cover."""
    from pipeline.bounds.backward import BackwardDomain
    from pipeline.bounds.hybrid_zonotope import HybridZonotopeDomain
    from pipeline.bounds.interval import IntervalDomain
    from pipeline.bounds.symbolic import SymbolicLinearDomain

    if issubclass(domain, BackwardDomain):
        symbolic = not issubclass(domain.companion, IntervalDomain)
        return symbolic, BACKWARD if domain.intermediate == "companion" else BACKWARD_INTERMEDIATE
    if issubclass(domain, IntervalDomain):
        return False, FORWARD
    if issubclass(domain, (SymbolicLinearDomain, HybridZonotopeDomain)):
        return True, FORWARD
    return None


def _final(s: Shadow, kind: str) -> torch.Tensor:
    """The error of the final lower bound from the shadow pass at the output."""
    concretise = gamma(2 * s.d + _C, s.u) * s.rho
    if kind == FORWARD:
        return SAFETY_FACTOR * (s.err + concretise)
    acc = s.acc if kind == BACKWARD else s.acc_crown
    return SAFETY_FACTOR * (acc + 2 * s.err + concretise)


@torch.no_grad()
def rounding_bounds(ops: list[Op], lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype,
                    domains: Sequence[type[Domain]], u: float | None = None,
                    ref_ops: list[Op] | None = None) -> list[torch.Tensor]:
    """Per domain, ``E`` ``[B, *out_shape]`` (float64): how far that domain's lower bound of the output of ``ops``
    over ``[lo, hi]``, computed in ``dtype`` (unit roundoff ``u``, default that of ``dtype``), can exceed the real
    minimum.  ``inf`` where no finite bound holds.  A domain the derivation does not cover gets the symbolic pass
    with backward intermediate bounds, the largest of the analysed cases (no proof)."""
    u = unit_roundoff(dtype) if u is None else u
    families = [family(domain) or (True, BACKWARD_INTERMEDIATE) for domain in domains]
    passes = {symbolic: shadow(ops, lo, hi, u, ref_ops, symbolic, [k for sym, k in families if sym == symbolic])
              for symbolic in dict.fromkeys(sym for sym, _ in families)}
    out = []
    for symbolic, kind in families:
        e = _final(passes[symbolic], kind)
        out.append(torch.where(torch.isfinite(e), e, torch.full_like(e, math.inf)))
    return out


def rounding_bound(ops: list[Op], lo: torch.Tensor, hi: torch.Tensor, dtype: torch.dtype,
                   domains: Sequence[type[Domain]], u: float | None = None,
                   ref_ops: list[Op] | None = None) -> torch.Tensor:
    """The largest of :func:`rounding_bounds` over ``domains``: covers a lower bound from any of them."""
    if not domains:
        raise ValueError("rounding_bound needs at least one domain")
    return torch.stack(rounding_bounds(ops, lo, hi, dtype, domains, u, ref_ops)).max(0).values


def _shift_magnitude_model(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` whose BatchNorm shifts are ``|beta| + |mean * scale|`` (``None`` without BatchNorm)."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return None
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                scale = (m.weight.abs() if m.affine else torch.ones_like(m.running_var)) \
                    / torch.sqrt(m.running_var + m.eps)
                if m.affine:  # shift = |beta| + |mean| * |scale|
                    m.bias.copy_(m.bias.abs() + m.running_mean.abs() * scale)
                    m.weight.abs_()
                    m.running_mean.zero_()
                else:  # shift = -mean * scale, no cancellation: its magnitude
                    m.running_mean.copy_(-m.running_mean.abs())
    return ref


def margin_rounding_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                           domains: Sequence[type[Domain]], dtype: torch.dtype = torch.float64,
                           u: float | None = None) -> list[torch.Tensor]:
    """Per domain, ``E`` ``[B, 10]`` for the margins ``z_y - z_j`` exactly as
    :func:`~pipeline.bounds.verify.bound_margins` bounds them (same ops, same folded spec, same box): the true minimum
    of margin ``j`` over the ε-ball is at least ``lb[:, j] - E[:, j]``.  Entry ``y`` (identically 0) is 0."""
    from pipeline.bounds.verify import input_box, margin_spec  # verify imports this module

    spec = margin_spec(y, 10, dtype)
    ops = fold_spec(to_ops(model, dtype), spec)
    ref_model = _shift_magnitude_model(model)
    ref_ops = None if ref_model is None else fold_spec(to_ops(ref_model, torch.float64), spec.double())
    lo, hi = input_box(x.to(dtype), eps)
    out = rounding_bounds(ops, lo, hi, dtype, domains, u, ref_ops)
    rows = torch.arange(x.shape[0], device=x.device)
    for e in out:
        e[rows, y] = 0.0
    return out


def margin_rounding_bound(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                          domains: Sequence[type[Domain]], dtype: torch.dtype = torch.float64,
                          u: float | None = None) -> torch.Tensor:
    """The largest of :func:`margin_rounding_bounds` over ``domains`` ``[B, 10]``."""
    if not domains:
        raise ValueError("margin_rounding_bound needs at least one domain")
    return torch.stack(margin_rounding_bounds(model, x, y, eps, domains, dtype, u)).max(0).values
