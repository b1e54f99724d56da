"""DiffAI (Mirman, Gehr, Vechev, ICML 2018, "Differentiable Abstract Interpretation for Provably Robust Neural
Networks"): training on the natural loss mixed with an abstract loss from the hybrid zonotope domain.

Threat model: L∞ ball of radius ε (ramped by the trainer) around each pixel image, within [0, 1].
Per batch ``x`` ``[B, C, H, W]``, ``y`` ``[B]`` (the full batch gets both terms):

    loss = (natural_weight * CE(model(x), y) + robust_weight * L_abs(lb, y)) / (natural_weight + robust_weight)

— DiffAI's ``aiLoss`` with width weight 0 (``__main__.py`` of github.com/eth-sri/diffai, ICML-2018 version) —
where ``lb`` ``[B, 10]`` lower-bounds the margins ``z_y - z_j`` by the ``domain`` (any registered domain; for
``hybrid_zonotope`` the ReLU transformer is ``relu``: ``hsmooth``, ``hswitch`` or ``deepz``,
:mod:`pipeline.bounds.hybrid_zonotope`) and ``L_abs`` is ``robust_loss``:

- ``softplus_max``: DiffAI's ``outRDomL``, ``softplus(max_j -(lb_j + [j = y]))``, the softplus of the largest margin
  violation (the label's own entry counts as -1), averaged over the batch;
- ``ce``: the robust cross-entropy ``CE(-lb, y)`` of Wong & Kolter (:func:`pipeline.bounds.verified_loss`).

Defaults (params.yaml ``methods.diffai``): ``domain: hybrid_zonotope``, ``relu: hsmooth`` (the smooth transformer
DiffAI introduces), ``robust_loss: softplus_max``, ``natural_weight: 1``, ``robust_weight: 1`` — an even mix (as
MixTrain's MNIST α = 0.5).  Stated deviation: DiffAI's command-line defaults are ``--std-weight 1 --tot-weight
0.001`` with optional growth schedules of the abstract weight; the weights of the paper's runs are not given in the
code, so the even mix is our choice.  Unlike Wong et al.'s projected training bound, ``lb`` here is sound.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.bounds import HYBRID_RELUS, get_domain, margin_lower_bounds, verified_loss
from pipeline.train.registry import Method, number_param, register_method
from pipeline.train.wong import uncertified_fraction
from pipeline.utils.precision import autocast

__all__ = ["DiffAI", "softplus_max_loss", "ROBUST_LOSSES"]


def softplus_max_loss(lb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DiffAI's abstract loss: batch mean of ``softplus(max_j -(lb[b, j] + [j = y_b]))``."""
    violation = -(lb + F.one_hot(y, lb.shape[1]).to(lb.dtype))
    return F.softplus(violation.max(1).values).mean()


ROBUST_LOSSES = {"softplus_max": softplus_max_loss, "ce": verified_loss}


@register_method("diffai")
class DiffAI(Method):
    def __init__(self, params, dataset, seed):
        super().__init__(params, dataset, seed)
        domain, relu = params.get("domain", "hybrid_zonotope"), params.get("relu")
        if domain == "hybrid_zonotope":
            relu = relu or "hsmooth"
            if relu not in HYBRID_RELUS:
                raise ValueError(f"diffai relu: expected one of {sorted(HYBRID_RELUS)}, got {relu!r}")
            self.domain = HYBRID_RELUS[relu]
        elif relu is not None:
            raise ValueError(f"diffai relu: only the hybrid_zonotope domain takes a ReLU transformer, not {domain!r}")
        else:
            self.domain = get_domain(domain)
        name = params.get("robust_loss", "softplus_max")
        if name not in ROBUST_LOSSES:
            raise ValueError(f"diffai robust_loss: expected one of {sorted(ROBUST_LOSSES)}, got {name!r}")
        self.robust_loss = ROBUST_LOSSES[name]
        self.weights = (number_param(params, "diffai", "natural_weight", default=1.0),
                        number_param(params, "diffai", "robust_weight", default=1.0))
        if sum(self.weights) <= 0:
            raise ValueError(f"diffai natural_weight/robust_weight: must be >= 0, not both 0, got {self.weights}")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, dict]:
        with autocast(x.device, self.mixed_precision):  # natural term only; the abstract bounds never
            logits = model(x)
        logits = logits.float()
        natural = F.cross_entropy(logits, y)
        w_nat, w_rob = self.weights
        stats = {"acc": (logits.argmax(1) == y).float().mean().item()}
        if w_rob == 0:
            return natural, stats
        lb = margin_lower_bounds(model, x, y, eps, self.domain)
        robust = self.robust_loss(lb, y)
        stats.update(robust_loss=robust.item(), robust_err=uncertified_fraction(lb.detach(), y))
        return (w_nat * natural + w_rob * robust) / (w_nat + w_rob), stats
