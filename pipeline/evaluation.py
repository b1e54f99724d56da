"""Evaluation of one trained model on the fixed test subset: ACC, VRA (and, later, ERA), per sample.

Metrics are proportions over the same ``n`` images of the committed seeded subset, each with a 95% Wilson interval.
Invariant checked here: a verified sample is correctly classified (VRA <= ACC); a violation is a soundness bug and
raises instead of writing metrics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pipeline.bounds import verify
from pipeline.utils import wilson_interval

__all__ = ["SampleResults", "evaluate_model", "summarize"]


@dataclass
class SampleResults:
    ids: list[str]
    labels: list[int]
    predictions: list[int]
    verified: list[bool]
    verified_by: list[str | None]
    min_margin_lb: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ids: list[str], eps: float,
                   domains: list[str], dtype: torch.dtype, margin_tol: float, batch_size: int) -> SampleResults:
    """Clean predictions and certification of every sample of ``x`` ``[N, C, H, W]`` (pixels) at radius ``eps``."""
    model.eval()
    preds = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    res = verify(model, x, y, eps, domains, dtype=dtype, margin_tol=margin_tol, batch_size=batch_size)
    out = SampleResults(ids, y.tolist(), preds.tolist(), res.verified, res.domain, res.min_margin_lb)
    bad = [i for i, (v, p, t) in enumerate(zip(out.verified, out.predictions, out.labels)) if v and p != t]
    if bad:
        raise AssertionError(f"soundness bug: samples {[ids[i] for i in bad]} verified but misclassified")
    return out


def summarize(s: SampleResults) -> dict[str, Any]:
    n = len(s.labels)
    correct = sum(p == t for p, t in zip(s.predictions, s.labels))
    verified = sum(s.verified)
    by: dict[str, int] = {}
    for d in s.verified_by:
        if d is not None:
            by[d] = by.get(d, 0) + 1
    return {"n": n, "acc": correct / n, "acc_ci95": list(wilson_interval(correct, n)),
            "vra": verified / n, "vra_ci95": list(wilson_interval(verified, n)), "verified_by": by}
