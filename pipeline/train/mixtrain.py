"""MixTrain (Wang, Chen, Abdou, Jana 2018, "MixTrain: Scalable Training of Formally Robust Neural Networks").

Threat model: L∞ ball of radius ε (ramped by the trainer) around each pixel image, within [0, 1].
Per batch ``x`` ``[B, C, H, W]``: the natural cross-entropy on the whole batch, plus the verified robust loss
(cross-entropy on the worst-case logits from sound margin bounds, :func:`pipeline.bounds.verified_loss`) on ``k``
samples drawn uniformly without replacement (stochastic output approximation), mixed as
``(1 - α) · natural + α · verified`` with α from :mod:`pipeline.train.alpha` (dynamic mixed training).

Defaults (params.yaml ``methods.mixtrain``): the paper's symbolic linear relaxation (``domain: symbolic_linear``);
any registered sound domain plugs in.  ``k`` = batch size is full verified training.  When α = 0 the verified loss
is not computed, so the step equals natural training's.  ``mixed_precision`` autocasts the natural forward only;
the verified loss's bounds always run in full precision.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.bounds import get_domain, margin_lower_bounds, verified_loss
from pipeline.train.alpha import alpha_schedule
from pipeline.train.registry import Method, register_method
from pipeline.utils.precision import autocast

__all__ = ["MixTrain", "AlphaMixedMethod", "sample_indices"]


def sample_indices(batch: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """``min(k, batch)`` distinct positions of a batch, uniformly at random."""
    return torch.randperm(batch, generator=generator)[: min(k, batch)]


class AlphaMixedMethod(Method):
    """What MixTrain and its variants share: a dynamic α (``self.alpha``, updated once per epoch from the validation
    accuracy and saved with the method's state), the natural part of the loss, and ``k_used`` (samples that got the
    verified loss in the last step; k capped at the batch size).  Subclasses set ``self.alpha`` and write ``loss``."""

    k_used: int = 0

    def natural_part(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Cross-entropy on the clean batch (autocast if ``mixed_precision``: the natural part only, bounds never)
        and the step's accuracy."""
        with autocast(x.device, self.mixed_precision):
            logits = model(x)
        logits = logits.float()
        return F.cross_entropy(logits, y), {"acc": (logits.argmax(1) == y).float().mean().item()}

    def end_epoch(self, epoch: int, val_acc: float) -> dict[str, float]:
        used = self.alpha.value
        self.alpha.update(epoch, val_acc)
        return {"alpha": used, "alpha_next": self.alpha.value, "k_used": self.k_used}

    def state_dict(self):
        return {**super().state_dict(), "alpha": self.alpha.state_dict()}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.alpha.load_state_dict(state["alpha"])


@register_method("mixtrain")
class MixTrain(AlphaMixedMethod):
    def __init__(self, params, dataset, seed):
        super().__init__(params, dataset, seed)
        if not isinstance(params.get("k"), int) or params["k"] < 1:
            raise ValueError(f"mixtrain k: expected an integer >= 1, got {params.get('k')!r}")
        self.k = params["k"]
        self.domain = get_domain(params["domain"])
        self.alpha = alpha_schedule(params["alpha"], params["alpha_rule"])

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, dict]:
        natural, stats = self.natural_part(model, x, y)
        stats["alpha"] = self.alpha.value
        if self.alpha.value == 0:
            return natural, stats
        idx = sample_indices(x.shape[0], self.k, self.generator).to(x.device)
        self.k_used = len(idx)
        lb = margin_lower_bounds(model, x[idx], y[idx], eps, self.domain)
        verified = verified_loss(lb, y[idx])
        stats["verified_loss"] = verified.item()
        return (1 - self.alpha.value) * natural + self.alpha.value * verified, stats
