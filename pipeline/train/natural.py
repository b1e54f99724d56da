"""Natural training ("Baseline" in the paper's tables): cross-entropy on clean inputs; ε plays no part."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.train.registry import Method, register_method
from pipeline.utils.precision import autocast

__all__ = ["Natural"]


@register_method("natural")
class Natural(Method):
    uses_eps = False

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, dict]:
        with autocast(x.device, self.mixed_precision):
            logits = model(x)
        logits = logits.float()
        loss = F.cross_entropy(logits, y)
        return loss, {"acc": (logits.argmax(1) == y).float().mean().item()}
