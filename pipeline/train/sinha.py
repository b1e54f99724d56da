"""Sinha, Namkoong, Duchi (ICLR 2018), "Certifying Some Distributional Robustness with Principled Adversarial
Training": WRM, adversarial training against a Wasserstein (squared-L2 transport cost) Lagrangian adversary.

Threat model: distributional. Each training input ``x`` is replaced by an approximate maximiser of the penalised loss
``ℓ(θ; z, y) - γ ‖z - x‖₂²`` (pixel space), and the model trains on ``z``. There is no ε-ball: the penalty ``γ``
sets the strength, so one trained model serves every ε row of the grid (``uses_eps = False``), exactly like natural
training. ``pipeline.config.EPS_FREE_METHODS`` lists it for that reason.

Inner maximisation, as in the authors' released code (``wrm`` in their ``attacks_tf.py``): the objective is scaled
as ``(1 / 2γ) ℓ(z) - ½‖z - x‖₂²``, the first step is ``z₀ = x + ∇_x (1/2γ) ℓ(x)``, then ``steps`` gradient-ascent
steps with step size ``1 / sqrt(t + 2)``.  Labels are the true labels, one-hot: the reference script trains on
labels smoothed by 0.1 (``clip(0.1/9, 0.9)``), which we do not (every method here trains on the same hard labels).
``z`` is not clipped to [0, 1], as in the reference code (the penalty keeps it close).

Defaults (params.yaml ``methods.sinha``): ``gamma = 0.385`` (the released MNIST setting, their ``eps = 1.3 = 0.5/γ``),
``steps = 15``.  Deviation, stated: Sinha et al. use ELU activations for their smoothness argument; here every method
trains the same ReLU architectures (Wong et al.'s definitions), because the comparison is on identical models and the
bound engine certifies ReLU networks.  Their certificate therefore does not apply to these models; the method is
compared, as in the MixTrain paper, by ACC / ERA / VRA.

Shapes: ``x`` ``[B, C, H, W]`` pixels, ``y`` ``[B]``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.train.registry import Method, int_param, number_param, register_method
from pipeline.utils.precision import autocast

__all__ = ["Sinha", "wrm_perturb"]


def wrm_perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, gamma: float, steps: int,
                mixed_precision: bool = False) -> torch.Tensor:
    """Approximate ``argmax_z ℓ(z, y) - γ‖z - x‖₂²`` per sample (the WRM inner problem); returns detached ``z``.

    Gradients are taken with respect to the input only, so the model's parameter gradients are untouched.
    ``mixed_precision``: the model's forward passes under bfloat16 autocast; logits, loss and ``z`` stay float32.
    """
    if gamma <= 0:
        raise ValueError(f"sinha gamma: expected a positive number, got {gamma!r}")
    scale = 0.5 / gamma
    x = x.detach()

    def loss_grad(z: torch.Tensor) -> torch.Tensor:
        z = z.detach().requires_grad_(True)
        with autocast(z.device, mixed_precision):
            logits = model(z)
        loss = scale * F.cross_entropy(logits.float(), y, reduction="sum")
        return torch.autograd.grad(loss, z)[0]

    z = x + loss_grad(x)
    for t in range(steps):
        z = z + (loss_grad(z) - (z - x)) / math.sqrt(t + 2)
    return z.detach()


@register_method("sinha")
class Sinha(Method):
    uses_eps = False

    def __init__(self, params, dataset, seed):
        super().__init__(params, dataset, seed)
        self.gamma = number_param(params, "sinha", "gamma", positive=True)
        self.steps = int_param(params, "sinha", "steps", 0)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, dict]:
        z = wrm_perturb(model, x, y, self.gamma, self.steps, self.mixed_precision)
        with autocast(x.device, self.mixed_precision):
            logits = model(z)
        logits = logits.float()
        loss = F.cross_entropy(logits, y)
        return loss, {"wrm_acc": (logits.argmax(1) == y).float().mean().item(),
                      "transport_l2": (z - x).flatten(1).norm(dim=1).mean().item()}
