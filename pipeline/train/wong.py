"""Wong, Schmidt, Metzen, Kolter (NeurIPS 2018), "Scaling provable adversarial defenses": robust training on the
dual-network (convex outer polytope) bound.

Threat model: L∞ ball of radius ε (ramped by the trainer) around each pixel image, within [0, 1].
Loss, on the full batch ``x`` ``[B, C, H, W]``, ``y`` ``[B]``: the robust cross-entropy
``CE(-lb, y)`` (:func:`pipeline.bounds.verified_loss`), where ``lb`` ``[B, 10]`` lower-bounds the margins
``z_y - z_j`` by the dual network (:mod:`pipeline.bounds.projection`): ReLU lines ``d x`` and ``d (x - l)`` with
``d = u / (u - l)``, intermediate bounds layer by layer, final bound by the exact backward pass.  Residual networks
are supported (the engine's ``Residual`` op).  There is no natural-loss term, as in the paper.

Defaults (params.yaml ``methods.wong``): ``projections: 10``: during training the ℓ1 terms of the intermediate
bounds are estimated by 10 random Cauchy projections with the median estimator (Wong et al.'s ``l1_median``
training); ``null`` trains on the exact (sound) bound.  The estimate is NOT a sound bound, only a training loss;
evaluation certifies with the models' ``vra_domains``.  Draws come from the method's own generator, so a run is
reproducible and resumes bit-identically.  (Wong et al.'s released scripts mostly use ``--l1_proj 50``.)
Logged: natural accuracy (no gradient) and ``robust_err``, the fraction of samples whose estimated bound does not
certify them (Wong et al.'s training "robust error"; an estimate, not a certificate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.bounds import margin_lower_bounds, verified_loss, wong_domain
from pipeline.train.registry import Method, register_method
from pipeline.utils.precision import autocast

__all__ = ["Wong", "uncertified_fraction"]


def uncertified_fraction(lb: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of samples with some margin lower bound ``lb[b, j]``, ``j != y_b``, at or below 0."""
    others = lb.masked_fill(F.one_hot(y, lb.shape[1]).bool(), float("inf"))
    return (others.min(1).values <= 0).float().mean().item()


@register_method("wong")
class Wong(Method):
    def __init__(self, params, dataset, seed):
        super().__init__(params, dataset, seed)
        self.projections = params.get("projections")
        self.domain = wong_domain(self.projections, self.generator)  # validates projections

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, dict]:
        lb = margin_lower_bounds(model, x, y, eps, self.domain)
        loss = verified_loss(lb, y)
        with torch.no_grad(), autocast(x.device, self.mixed_precision):  # logged accuracy only, not the bound
            acc = (model(x).argmax(1) == y).float().mean().item()
        return loss, {"acc": acc, "robust_err": uncertified_fraction(lb.detach(), y)}
