"""CW-L∞: PGD on the Carlini–Wagner margin loss (Carlini & Wagner, "Towards evaluating the robustness of neural
networks", S&P 2017; the L∞ PGD form of Madry et al. 2018), as the MixTrain paper uses for ERA(CW).

Threat model: L∞ ball of radius ``eps`` around the pixel image, intersected with [0, 1] (pixel space).
Shapes: ``x`` ``[B, C, H, W]`` pixels in [0, 1], ``y`` ``[B]``; the result has the shape of ``x``.

Loss: Carlini–Wagner's ``f(x') = max(z_y - max_{j != y} z_j, -kappa)`` on the logits ``z``, *minimised*; the PGD loop
of :mod:`pipeline.attacks.pgd` maximises ``-f`` (:func:`cw_margin_loss`).  Everything else (random start, signed
steps, projection, first-success tracking, restarts, cost) is :class:`~pipeline.attacks.pgd.PGD`'s, shared by
subclassing with a different loss.

Defaults ``CW(steps=40, step_size=0.01, restarts=1, random_start=True, kappa=0.0)``: the same budget as the PGD
column (the paper's MNIST PGD setting) so the ERA(PGD) and ERA(CW) columns differ only in the loss.  ``kappa = 0``
is Carlini–Wagner's own choice for minimum-confidence examples: once a sample is misclassified its loss is flat (its
gradient, hence its step, is zero), which is fine because the first misclassified iterate is what is kept.
"""
from __future__ import annotations

import torch

from pipeline.attacks.base import check_nonneg, register_attack
from pipeline.attacks.pgd import PGD

__all__ = ["cw_margin_loss", "CW"]


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, kappa: float = 0.0) -> torch.Tensor:
    """``-max(z_y - max_{j != y} z_j, -kappa)`` per sample ``[B]`` (larger = closer to / deeper into a mistake)."""
    z_y = logits.gather(1, y[:, None])[:, 0]
    is_y = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, y[:, None], True)
    z_other = logits.masked_fill(is_y, -float("inf")).amax(1)
    return -torch.clamp(z_y - z_other, min=-kappa)


@register_attack("cw")
class CW(PGD):
    """PGD L∞ on the Carlini–Wagner margin loss; see the module docstring."""

    def __init__(self, steps: int = 40, step_size: float = 0.01, restarts: int = 1, random_start: bool = True,
                 kappa: float = 0.0):
        super().__init__(steps=steps, step_size=step_size, restarts=restarts, random_start=random_start)
        self.kappa = check_nonneg("kappa", kappa)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cw_margin_loss(logits, y, self.kappa)
