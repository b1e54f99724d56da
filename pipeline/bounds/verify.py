"""Margin bounds over an L∞ ball, the verified robust loss, and certification (VRA).

Threat model: L∞ perturbations of radius ``eps`` in pixel space, intersected with the valid pixel range [0, 1]; the
model's own normalisation layer maps that box into its input space.  ``margin_spec`` builds the specification
``C[b] = e_y - e_j`` (all 10 rows; row ``y`` is zero), so ``lb[b, j]`` lower-bounds ``z_y - z_j``.

Float rounding guard: bounds for certification are computed in ``float64`` by default (the network's float32 weights
are cast exactly), and a sample counts as verified only if every margin has a lower bound ``lb_d - E_d`` above
``margin_tol`` for some domain ``d``.  ``E_d`` (:func:`~pipeline.bounds.rounding.margin_rounding_bounds`) bounds the
rounding error of that domain's bound computation and scales with the magnitudes of weights and activations, so a
certificate holds for the real-arithmetic function of the stored weights over the real ε-ball whatever the weights
(docs/bounds.md, "Rounding: what a certificate guarantees").  ``margin_tol`` (absolute, logit units) is extra slack,
not part of that proof: the deployed network runs in float32, whose logits differ from the real-arithmetic value by
rounding, so a margin proven to be a hair above zero is not claimed.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.bounds.base import Domain, get_domain
from pipeline.bounds.graph import Op, fold_spec, propagate, to_ops
from pipeline.bounds.interval import IntervalDomain
from pipeline.bounds.kernels import eager_kernels
from pipeline.bounds.rounding import margin_rounding_bounds
from pipeline.utils.progress import progress

__all__ = ["input_box", "margin_spec", "bound_margins", "margin_lower_bounds", "verified_loss", "VerifyResult",
           "verify", "float32_logit_guard", "FLOAT32_LOGIT_LIMIT"]


def input_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ε-ball around pixels ``x`` intersected with [0, 1]."""
    return (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)


def margin_spec(y: torch.Tensor, num_classes: int = 10, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``C`` ``[B, num_classes, num_classes]`` with ``C[b, j] = e_{y_b} - e_j``."""
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y][:, None, :] - eye[None]


def bound_margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, domain: str | type[Domain],
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound ``(lb, ub)`` ``[B, 10]`` of the margins ``z_y - z_j`` over the ε-ball of each sample (entry ``y`` is 0).

    ``model`` must be in eval mode if it has BatchNorm.  Differentiable with respect to the model's parameters.
    """
    cls = get_domain(domain) if isinstance(domain, str) else domain
    ops = to_ops(model, dtype)
    ops = fold_spec(ops, margin_spec(y, 10, dtype))
    lo, hi = input_box(x.to(dtype), eps)
    return propagate(ops, cls.from_box(lo, hi)).concretize()


def margin_lower_bounds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                        domain: str | type[Domain], dtype: torch.dtype = torch.float32,
                        observe: Callable[[Op, Domain], None] | None = None) -> torch.Tensor:
    """The ``lb`` of :func:`bound_margins` alone, ``[B, 10]`` (entry ``y`` is 0), for less work: only the nine
    margins ``z_y - z_j``, ``j != y``, are propagated (the spec row ``y`` is zero), and domains whose upper bound
    costs extra (the backward ones: a second set of rows) skip it.  The same bound as
    ``bound_margins(...)[0]`` (products of other shapes may round differently, ~1e-17 in float64).
    ``observe``: see :func:`~pipeline.bounds.graph.propagate` (the intermediate states of the same pass).
    """
    cls = get_domain(domain) if isinstance(domain, str) else domain
    n = 10
    others = torch.arange(n, device=y.device).expand(len(y), n)
    others = others[others != y[:, None]].view(len(y), n - 1)                       # [B, 9]: the classes j != y
    spec = margin_spec(y, n, dtype).gather(1, others[..., None].expand(-1, -1, n))  # [B, 9, 10]
    ops = fold_spec(to_ops(model, dtype), spec)
    lo, hi = input_box(x.to(dtype), eps)
    lb9 = propagate(ops, cls.from_box(lo, hi), observe).concretize_lower()
    return lb9.new_zeros(len(y), n).scatter(1, others, lb9)


def verified_loss(lb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the worst-case logits ``-lb`` (Wong & Kolter): an upper bound on the worst-case CE."""
    return F.cross_entropy(-lb, y)


@dataclass
class VerifyResult:
    """Per sample: ``verified`` (bool), ``domain`` (name of the first domain that verifies it alone, ``"combined"`` if
    only the combination does, else ``None``), ``min_margin_lb`` (the combination's raw bound: elementwise maximum of
    the domains' lower bounds, minimum over the margins; ``None`` for misclassified samples, which are never bounded)
    and ``threshold`` (what ``min_margin_lb`` had to exceed: ``margin_tol`` plus the sample's rounding-error
    deduction, see :func:`verify`; ``None`` for misclassified samples)."""
    verified: list[bool]
    domain: list[str | None]
    min_margin_lb: list[float | None]
    threshold: list[float | None] = field(default_factory=list)


#: backends whose float32 precision setting may allow TF32 or bfloat16 arithmetic (torch's ``fp32_precision`` API)
_PRECISION_SETTINGS = ("mkldnn.matmul", "mkldnn.conv", "cuda.matmul", "cudnn.conv")


@contextlib.contextmanager
def _exact_kernels(device: torch.device):
    """Float32 matmuls and convolutions in IEEE float32 (no TF32, no bfloat16: oneDNN, cuBLAS), and on CUDA no cuDNN
    (its FFT/Winograd convolutions escape the dot-product error model; TF32 is its float32 default), so every matmul
    and convolution is a sum of rounded products in the working dtype.  Settings are restored afterwards."""
    legacy = torch.get_float32_matmul_precision()
    saved = []
    for path in _PRECISION_SETTINGS:
        obj = torch.backends
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None and hasattr(obj, "fp32_precision"):
            saved.append((obj, obj.fp32_precision))
    try:
        torch.set_float32_matmul_precision("highest")
        for obj, _ in saved:
            obj.fp32_precision = "ieee"
        if device.type == "cuda":
            with torch.backends.cudnn.flags(enabled=False):
                yield
        else:
            yield
    finally:
        torch.set_float32_matmul_precision(legacy)
        for obj, value in reversed(saved):
            obj.fp32_precision = value


#: logits whose interval bound reaches this magnitude are not certified (float32 overflows at 3.4e38)
FLOAT32_LOGIT_LIMIT = 1e30


def float32_logit_guard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """``[B, 10]``: extra slack per margin for the deployed float32 network, ``4 u32 (|z_y| + |z_j|)`` with the
    logits' magnitudes over the box from float64 interval bounds (``u32 = 2^-24``); ``inf`` where a logit bound
    reaches :data:`FLOAT32_LOGIT_LIMIT` or is not finite.

    The certificate itself is about the real-arithmetic network (the rounding bounds above make it so).  This guard
    is for the float32 forward pass that decides a prediction: two logits within a few float32 ulps of each other
    can round to a tie (argmax then picks the lower index) although their real difference is positive, and huge
    logits overflow.  It covers the final rounding of the logits, not the float32 accumulation inside the network
    (a worst-case bound on that is ~0.1 logit units on MNIST_Small, far above the errors that occur); see
    docs/bounds.md."""
    lo, hi = propagate(to_ops(model, torch.float64), IntervalDomain.from_box(*input_box(x.double(), eps))).concretize()
    mag = torch.maximum(lo.abs(), hi.abs())
    mag = torch.where(torch.isfinite(mag) & (mag < FLOAT32_LOGIT_LIMIT), mag, torch.full_like(mag, float("inf")))
    worst = mag.gather(1, y[:, None]) + mag
    return 4 * 2.0 ** -24 * worst


@torch.no_grad()
def verify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, domains: list[str],
           dtype: torch.dtype = torch.float64, margin_tol: float = 1e-4, batch_size: int = 64,
           rounding_guard: bool = True, float32_guard: bool = True,
           progress_label: str | None = None) -> VerifyResult:
    """Certify each sample: every margin must have a sound lower bound above ``margin_tol``.

    Each domain's lower bound ``lb_d`` is corrected by its own rounding-error bound ``E_d``
    (:func:`~pipeline.bounds.rounding.margin_rounding_bounds`, for ``dtype``), so ``lb_d - E_d`` is a lower bound of
    the real-arithmetic margin over the real ε-ball; margin ``j`` is proven by the best domain,
    ``max_d (lb_d[j] - E_d[j])``; ``E_d`` also carries :func:`float32_logit_guard` (the deployed float32 network's
    final rounding; ``float32_guard=False`` leaves it out, for a claim about the real-arithmetic network only).
    ``rounding_guard=False`` takes ``E_d = 0`` (the old fixed threshold: unsound for large logits;
    kept for comparison).  The reported ``threshold`` is ``margin_tol + min_margin_lb - sound`` with
    ``sound = min_j max_d (lb_d[j] - E_d[j])``, so ``verified`` is ``min_margin_lb > threshold`` (up to the rounding
    of that subtraction; the decision itself is ``sound > margin_tol``).

    Domains run in the given order, each only on the samples still open (correctly classified and not yet
    verified), so cheap domains listed first save the expensive ones work; the result does not depend on that.
    """
    if not domains:
        raise ValueError("verify needs at least one bound domain")
    classes = [get_domain(d) for d in domains]
    was_training = model.training
    model.eval()
    n = x.shape[0]
    inf = float("inf")
    try:
        correct = torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                             for i in range(0, n, batch_size)])
        best = torch.full((n, 10), -inf, dtype=torch.float64, device=x.device)  # max_d lb_d (raw)
        best[torch.arange(n), y] = inf  # the y-th "margin" is 0 by construction; not a constraint
        sound = best.clone()  # max_d (lb_d - E_d)
        rounding = torch.zeros(len(domains), n, 10, dtype=torch.float64, device=x.device)  # E_d per sample, margin
        verified = torch.zeros(n, dtype=torch.bool, device=x.device)
        first: list[str | None] = [None] * n
        with _exact_kernels(x.device), eager_kernels(), torch.autocast(x.device.type, enabled=False):
            if rounding_guard:
                todo = correct.nonzero().flatten()
                for start in range(0, len(todo), batch_size):
                    idx = todo[start:start + batch_size]
                    rounding[:, idx] = torch.stack(margin_rounding_bounds(model, x[idx], y[idx], eps, classes, dtype))
                    if float32_guard:
                        rounding[:, idx] += float32_logit_guard(model, x[idx], y[idx], eps)
            for k, (name, cls) in enumerate(zip(domains, classes)):
                todo = (correct & ~verified).nonzero().flatten()
                starts = range(0, len(todo), batch_size)
                if progress_label is not None:  # a bar with an ETA per domain, for logs of long evaluations
                    starts = progress(starts, desc=f"{progress_label} verify {name} ({len(todo)} open)",
                                      unit="batch")
                for start in starts:
                    idx = todo[start:start + batch_size]
                    lb = margin_lower_bounds(model, x[idx], y[idx], eps, cls, dtype).double()
                    # a non-finite bound proves nothing (an overflow to +inf included)
                    lb_sound = torch.where(torch.isfinite(lb), lb - rounding[k, idx], -inf)
                    lb_sound = lb_sound.masked_fill(best[idx] == inf, inf)
                    lb = lb.masked_fill(best[idx] == inf, inf)
                    for i, ok in zip(idx.tolist(), (lb_sound.min(1).values > margin_tol).tolist()):
                        if ok and first[i] is None:
                            first[i] = name
                    best[idx] = torch.maximum(best[idx], lb)
                    sound[idx] = torch.maximum(sound[idx], lb_sound)
                verified = correct & (sound.min(1).values > margin_tol)
        min_lb, min_sound = best.min(1).values, sound.min(1).values
        deduction = torch.where(torch.isfinite(min_lb) & torch.isfinite(min_sound), min_lb - min_sound,
                                rounding.amax((0, 2)))
        threshold = margin_tol + deduction
    finally:
        model.train(was_training)
    ok = verified.tolist()
    return VerifyResult(ok, [(f or "combined") if v else None for f, v in zip(first, ok)],
                        [v if v > -inf else None for v in min_lb.tolist()],
                        [t if c else None for t, c in zip(threshold.tolist(), correct.tolist())])
