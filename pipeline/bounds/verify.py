"""Margin bounds over an L∞ ball, the verified robust loss, and certification (VRA).

Threat model: L∞ perturbations of radius ``eps`` in pixel space, intersected with the valid pixel range [0, 1]; the
model's own normalisation layer maps that box into its input space.  ``margin_spec`` builds the specification
``C[b] = e_y - e_j`` (all 10 rows; row ``y`` is zero), so ``lb[b, j]`` lower-bounds ``z_y - z_j``.

Float rounding guard: bounds for certification are computed in ``float64`` by default (the network's float32 weights
are cast exactly), and a sample counts as verified only if every margin's lower bound exceeds ``margin_tol`` (logit
units).  The threshold covers what float64 cannot: the deployed network runs in float32, whose logits may differ from
the real-arithmetic value of the same weights by rounding, so a margin proven to be a hair above zero is not claimed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.bounds.base import Domain, get_domain
from pipeline.bounds.graph import fold_spec, propagate, to_ops

__all__ = ["input_box", "margin_spec", "bound_margins", "verified_loss", "VerifyResult", "verify"]


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


def verified_loss(lb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on the worst-case logits ``-lb`` (Wong & Kolter): an upper bound on the worst-case CE."""
    return F.cross_entropy(-lb, y)


@dataclass
class VerifyResult:
    """Per sample: ``verified`` (bool), ``domain`` (name of the first domain that verifies it alone, ``"combined"`` if
    only the elementwise maximum of all lower bounds does, else ``None``) and ``min_margin_lb`` (of the combination;
    ``None`` for misclassified samples, which are never bounded)."""
    verified: list[bool]
    domain: list[str | None]
    min_margin_lb: list[float | None]


@torch.no_grad()
def verify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, domains: list[str],
           dtype: torch.dtype = torch.float64, margin_tol: float = 1e-4, batch_size: int = 64) -> VerifyResult:
    """Certify each sample: every margin's lower bound (max over ``domains``) must exceed ``margin_tol``.

    Domains run in the given order, each only on the samples still open (correctly classified and not yet
    verified), so cheap domains listed first save the expensive ones work; the result does not depend on that.
    """
    if not domains:
        raise ValueError("verify needs at least one bound domain")
    classes = [get_domain(d) for d in domains]
    was_training = model.training
    model.eval()
    n = x.shape[0]
    try:
        correct = torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                             for i in range(0, n, batch_size)])
        best = torch.full((n, 10), -float("inf"), dtype=torch.float64, device=x.device)
        best[torch.arange(n), y] = float("inf")  # the y-th "margin" is 0 by construction; not a constraint
        verified = torch.zeros(n, dtype=torch.bool, device=x.device)
        first: list[str | None] = [None] * n
        for name, cls in zip(domains, classes):
            todo = (correct & ~verified).nonzero().flatten()
            for start in range(0, len(todo), batch_size):
                idx = todo[start:start + batch_size]
                lb, _ = bound_margins(model, x[idx], y[idx], eps, cls, dtype)
                lb = lb.double().masked_fill(best[idx] == float("inf"), float("inf"))
                for i, ok in zip(idx.tolist(), (lb.min(1).values > margin_tol).tolist()):
                    if ok and first[i] is None:
                        first[i] = name
                best[idx] = torch.maximum(best[idx], lb)
            verified = correct & (best.min(1).values > margin_tol)
        min_lb = best.min(1).values
    finally:
        model.train(was_training)
    ok = verified.tolist()
    return VerifyResult(ok, [(f or "combined") if v else None for f, v in zip(first, ok)],
                        [v if v > -float("inf") else None for v in min_lb.tolist()])
