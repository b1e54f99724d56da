"""Madry, Makelov, Schmidt, Tsipras, Vladu (ICLR 2018), "Towards Deep Learning Models Resistant to Adversarial
Attacks": PGD adversarial training.

Threat model: L∞ ball of radius ε (ramped by the trainer, like every method) around each pixel image, within [0, 1].
Per batch ``x`` ``[B, C, H, W]``: PGD with a uniform random start (seeded by the method's own generator, so runs are
reproducible and resumable) maximises the cross-entropy inside the ball; the model trains on the cross-entropy of the
perturbed batch.  The attack is :func:`pipeline.attacks.pgd_perturb`, the same code that measures ERA(PGD), and it
does not touch the model's parameter gradients.  The model stays in train mode for the attack, as in Madry et al.

Defaults (params.yaml ``methods.madry``, per dataset): MNIST 40 steps of 0.01 (the paper's setting); CIFAR 7 steps of
0.5/255 pixel-space (= 2/255 · 1/4: Madry et al.'s 7 steps of 2 at ε=8 on the 0-255 scale, rescaled to ε=2/255).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks import pgd_perturb
from pipeline.train.registry import Method, bool_param, int_param, number_param, register_method
from pipeline.utils.precision import autocast, mixed_forward

__all__ = ["Madry"]


@register_method("madry")
class Madry(Method):
    def __init__(self, params, dataset, seed):
        super().__init__(params, dataset, seed)
        self.steps = int_param(params, "madry", "steps", 1)
        self.step = number_param(params, "madry", "step", positive=True)  # pixel space
        self.random_start = bool_param(params, "madry", "random_start")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, dict]:
        with mixed_forward(model, x.device, self.mixed_precision):  # float32 logits, bfloat16 inside the model
            x_adv = pgd_perturb(model, x, y, eps, self.steps, self.step, self.random_start, self.generator)
        with autocast(x.device, self.mixed_precision):
            logits = model(x_adv)
        logits = logits.float()
        return F.cross_entropy(logits, y), {"adv_acc": (logits.argmax(1) == y).float().mean().item()}
