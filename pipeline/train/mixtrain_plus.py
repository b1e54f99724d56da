"""MixTrain+ — this project's recipe, not the paper's: MixTrain's two ideas on a modern certified-training base.

Kept from MixTrain (Wang, Chen, Abdou, Jana 2018): the tight verified loss (``domain``, default the symbolic linear
relaxation) on ``k`` samples drawn per batch (stochastic output approximation), and a dynamic mixing weight α
(:mod:`pipeline.train.alpha`, moved once per epoch from the validation accuracy).
Added (each a parameter, so an ablation is a run override; docs/mixtrain_plus.md):

- ``batch_domain`` (default ``interval``): a cheap sound bound (IBP, Gowal et al. 2018) on the *whole* batch, so
  every sample gets a robust signal; the robust term is ``(1 - tight_weight) · CE(batch bound) + tight_weight ·
  CE(tight bound on the k samples)`` (the k-sample term sharpens it, as CROWN-IBP's mixture does; Zhang et al. 2020).
  ``tight_schedule: ramp_down`` fades ``tight_weight`` out with the ε ramp (× (1 − ε / target ε)), like CROWN-IBP's
  β going from 1 to 0, so the tight bound shapes the early network and costs nothing after the ramp
  (``constant``: the same weight throughout).  ``tight_max_eps``: the tight term is used only by runs whose target
  ε is at most this (null: every run) — measured on MNIST_Small: CROWN-IBP on 10 samples during the ramp added
  2.2 points of validation VRA at ε = 0.1 in 25 minutes, and cost 3.2 at ε = 0.3 in 15 minutes, where its dearer
  ramp left half the epochs (docs/mixtrain_plus.md).
- ``init: ibp``: the initialisation of Shi et al. 2021 ("Fast certified robust training with short warmup"):
  weights ~ N(0, σ²) with σ = √(2π) / fan-in, biases 0, which keeps interval widths from growing layer by layer at
  the start (``default``: PyTorch's initialisation).
- ε and α warm-up: the trainer's ε ramp (``eps_ramp_epochs``), and with ``alpha_warmup`` the robust weight
  scaled by ε / target ε during the ramp, so training starts natural.
- ``eps_train_factor``: train at ``factor · ε`` (clipped to 1), Gowal et al.'s trick for a margin at test ε.
- ``weight_ema`` (decay; optional, 0 = off): keep an exponential moving average of the weights
  (:class:`~pipeline.train.weight_avg.WeightEMA`, Polyak averaging) and validate and keep the averaged weights
  instead of the last ones.
- ``warmup_reg`` (λ; optional, 0 = off): Shi et al. 2021's warm-up regularisers (interval-bound tightness and ReLU
  balance, :mod:`pipeline.train.warmup_reg`) on the whole batch's IBP pass, weighted ``λ · (1 − ε / target ε)``,
  so they act only while ε ramps.  Needs ``batch_domain: interval`` (they read its pre-activation bounds).

Threat model: L∞ ball of radius ε around pixel images in [0, 1].  Shapes: ``x`` ``[B, C, H, W]``, ``y`` ``[B]``.
Loss = ``(1 - α) · CE(natural) + α · robust``; with α = 0 only the natural term is computed.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.bounds import IntervalDomain, get_domain, margin_lower_bounds, verified_loss
from pipeline.train.alpha import alpha_schedule
from pipeline.train.mixtrain import AlphaMixedMethod, sample_indices
from pipeline.train.registry import bool_param, int_param, number_param, register_method
from pipeline.train.warmup_reg import ReluInputs, warmup_regularizer
from pipeline.train.weight_avg import WeightEMA

__all__ = ["MixTrainPlus", "ibp_init"]

INITS = ("ibp", "default")
TIGHT_SCHEDULES = ("constant", "ramp_down")


@torch.no_grad()
def ibp_init(model: nn.Module, generator: torch.Generator) -> None:
    """Shi et al. (2021)'s IBP initialisation of every Linear and Conv2d: ``w ~ N(0, (√(2π) / fan_in)²)``, bias 0.
    fan_in = in_features (Linear) or in_channels/groups · kernel area (Conv2d)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * (math.sqrt(2 * math.pi) / fan_in))
            if m.bias is not None:
                m.bias.zero_()


@register_method("mixtrain_plus")
class MixTrainPlus(AlphaMixedMethod):
    def __init__(self, params, dataset, seed):
        super().__init__(params, dataset, seed)
        self.k = int_param(params, "mixtrain_plus", "k", 0)
        self.domain = get_domain(params.get("domain"))
        self.batch_domain = get_domain(params.get("batch_domain"))
        self.tight_weight = number_param(params, "mixtrain_plus", "tight_weight")
        if self.tight_weight > 1 or (self.k == 0 and self.tight_weight > 0):
            raise ValueError(f"mixtrain_plus tight_weight: expected a number in [0, 1] (0 when k = 0), got "
                             f"{self.tight_weight!r} with k={self.k}")
        self.tight_schedule = params.get("tight_schedule", "constant")  # optional: configs before it are constant
        if self.tight_schedule not in TIGHT_SCHEDULES:
            raise ValueError(f"mixtrain_plus tight_schedule: expected one of {list(TIGHT_SCHEDULES)}, got "
                             f"{self.tight_schedule!r}")
        self.tight_max_eps = (None if params.get("tight_max_eps") is None  # optional: null = every run
                              else number_param(params, "mixtrain_plus", "tight_max_eps", positive=True))
        self.eps_train_factor = number_param(params, "mixtrain_plus", "eps_train_factor", positive=True)
        if params.get("init") not in INITS:
            raise ValueError(f"mixtrain_plus init: expected one of {list(INITS)}, got {params.get('init')!r}")
        self.init = params["init"]
        self.alpha = alpha_schedule(params.get("alpha"), params.get("alpha_rule"))
        self.alpha_warmup = bool_param(params, "mixtrain_plus", "alpha_warmup")
        self.warmup_reg = number_param(params, "mixtrain_plus", "warmup_reg", default=0.0)  # optional: 0 = off
        if self.warmup_reg > 0 and self.batch_domain is not IntervalDomain:
            raise ValueError(f"mixtrain_plus warmup_reg: the regularisers read interval pre-activation bounds; expected "
                             f"batch_domain 'interval' with warmup_reg {self.warmup_reg!r}, got "
                             f"{params.get('batch_domain')!r}")

        decay = number_param(params, "mixtrain_plus", "weight_ema", default=0.0)  # optional: 0 = off
        if decay >= 1:
            raise ValueError(f"mixtrain_plus weight_ema: expected 0 (off) or a decay in (0, 1), got {decay!r}")
        self.ema = WeightEMA(decay) if decay > 0 else None

    def after_step(self, model: nn.Module) -> None:
        if self.ema is not None:
            self.ema.update(model)

    def evaluation_weights(self, model: nn.Module):
        return super().evaluation_weights(model) if self.ema is None else self.ema.swapped(model)

    def finalize(self, model: nn.Module) -> None:
        if self.ema is not None:
            self.ema.copy_to(model)

    def state_dict(self):
        return {**super().state_dict(), **({"ema": self.ema.state_dict()} if self.ema is not None else {})}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    def prepare_model(self, model: nn.Module) -> None:
        if self.init == "ibp":
            ibp_init(model, torch.Generator().manual_seed(int(self.generator.initial_seed()) + 1))

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> tuple[torch.Tensor, dict]:
        natural, stats = self.natural_part(model, x, y)
        # how far the ε ramp has gone (1 after it); the warm-ups grow with it, the ramp-down terms fade with it
        ramp = min(1.0, eps / self.target_eps) if self.target_eps > 0 else 1.0
        # α warm-up: the robust weight grows with the ramped ε (α · ε / target ε), so the first steps are natural
        # training; measured: with the full α from the first step IBP training collapses to one class
        a = self.alpha.value * (ramp if self.alpha_warmup else 1.0)
        stats["alpha"] = a
        if a == 0 or eps <= 0:
            return natural, stats
        eps_t = min(1.0, self.eps_train_factor * eps)
        reg_weight = self.warmup_reg * (1.0 - ramp)
        observed = ReluInputs() if reg_weight > 0 else None
        robust = batch_loss = verified_loss(margin_lower_bounds(model, x, y, eps_t, self.batch_domain,
                                                                observe=observed), y)
        stats["batch_verified_loss"] = batch_loss.item()
        reg = 0.0
        if observed is not None:
            reg = reg_weight * warmup_regularizer(observed)
            stats["warmup_reg"] = reg.detach().item()
        tw = self.tight_weight if self.tight_max_eps is None or self.target_eps <= self.tight_max_eps else 0.0
        if self.tight_schedule == "ramp_down":
            tw *= 1.0 - ramp
        stats["tight_weight"] = tw
        if self.k and tw > 0:
            idx = sample_indices(x.shape[0], self.k, self.generator).to(x.device)
            self.k_used = len(idx)
            tight = verified_loss(margin_lower_bounds(model, x[idx], y[idx], eps_t, self.domain), y[idx])
            stats["verified_loss"] = tight.item()
            robust = (1 - tw) * batch_loss + tw * tight
        return (1 - a) * natural + a * robust + reg, stats
