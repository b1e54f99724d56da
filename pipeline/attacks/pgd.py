"""PGD L∞ (Madry et al., "Towards deep learning models resistant to adversarial attacks", ICLR 2018).

Threat model: L∞ ball of radius ``eps`` around the pixel image, intersected with [0, 1] (pixel space).
Shapes: ``x`` ``[B, C, H, W]`` pixels in [0, 1], ``y`` ``[B]``; the result has the shape of ``x``.

Algorithm: start at ``x`` or (``random_start``) uniformly in the ball (drawn from the passed ``torch.Generator``),
then ``steps`` times ``x' <- project(x' + step_size * sign(grad_x' loss))`` with the per-sample loss summed over the
batch (samples do not interact in eval mode, so each sample's gradient is its own).  Loss: cross-entropy (to
maximise).  Other losses plug in through ``loss_fn`` / :meth:`PGD.loss` (CW-L∞ in :mod:`pipeline.attacks.cw`).

- :func:`pgd_perturb`: the bare inner maximisation for adversarial training (Madry): returns the last iterate, does
  not touch the model's mode, and differentiates w.r.t. the input only (``torch.autograd.grad``), so no gradient
  accumulates in the model's parameters.  (A model in train mode with BatchNorm updates its running statistics
  during the attack's forward passes, as in any training-mode forward.)
- :class:`PGD` (registered ``"pgd"``): the evaluation attack.  Every iterate's forward pass also tells whether that
  iterate is already misclassified; the *first* misclassified iterate of a sample is kept (so the attack is never
  weaker than its last iterate).  ``restarts`` re-run the attack from fresh random starts on the samples not yet
  broken; a sample keeps the first restart that breaks it.

Defaults ``PGD(steps=40, step_size=0.01, restarts=1, random_start=True)``: the MixTrain paper's MNIST setting (40
iterations, step 0.01).  For CIFAR the paper uses 7 iterations; the step size is the caller's choice there (e.g.
``eps / 4``, as in Madry's CIFAR 7-step attack 2/255 for ε = 8/255).

Cost: per restart ``steps`` × (forward + backward) + 1 forward for the last iterate = ``2 * steps + 1`` passes over
the samples it runs on; with the base class's clean and re-check forwards, ``restarts`` restarts on a batch that
nothing breaks cost ``restarts * (2 * steps + 1) + 2`` passes.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.attacks.base import Attack, CostMeter, check_int, check_nonneg, project, register_attack

__all__ = ["LossFn", "cross_entropy_loss", "random_start_point", "pgd_loop", "pgd_perturb", "tracked_pgd", "PGD"]

#: ``loss_fn(logits [B, classes], y [B]) -> [B]``, a per-sample loss the attack *maximises*.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: ``on_logits(x_iterate [B, ...], logits [B, classes])``, called (detached) at every forward pass of the loop.
LogitsHook = Callable[[torch.Tensor, torch.Tensor], None]


def cross_entropy_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy ``[B]``."""
    return F.cross_entropy(logits, y, reduction="none")


def random_start_point(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A point uniform in the L∞ ball of ``x``, then clamped to [0, 1]; drawn on the generator's device (the global
    RNG of ``x``'s device if ``generator`` is None), so a CPU generator seeds a CUDA attack too."""
    device = generator.device if generator is not None else x.device
    noise = torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
    return project(x + (2.0 * noise - 1.0) * eps, x, eps)


def pgd_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, x_start: torch.Tensor, steps: int,
             step_size: float, loss_fn: LossFn = cross_entropy_loss,
             on_logits: LogitsHook | None = None) -> torch.Tensor:
    """``steps`` signed-gradient ascent steps on ``loss_fn`` from ``x_start``, each projected onto the ε-ball of
    ``x`` ∩ [0, 1]; returns the last iterate (detached).  Gradients are taken w.r.t. the iterate only."""
    x = x.detach()
    x_adv = project(x_start.detach(), x, eps)
    with torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            if on_logits is not None:
                on_logits(x_adv.detach(), logits.detach())
            (grad,) = torch.autograd.grad(loss_fn(logits, y).sum(), x_adv)
            x_adv = project(x_adv.detach() + step_size * grad.sign(), x, eps)
    return x_adv.detach()


def pgd_perturb(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
                random_start: bool = True, generator: torch.Generator | None = None,
                loss_fn: LossFn = cross_entropy_loss) -> torch.Tensor:
    """The last PGD iterate for ``x`` ``[B, ...]`` (for adversarial training).  Leaves the model's mode alone and
    accumulates no parameter gradients."""
    x = x.detach()
    start = random_start_point(x, eps, generator) if random_start else x
    return pgd_loop(model, x, y, eps, start, steps, step_size, loss_fn)


class _FirstSuccess:
    """Per sample, the first iterate seen misclassified."""

    def __init__(self, y: torch.Tensor, like: torch.Tensor):
        self.y = y
        self.x_adv = torch.empty_like(like)
        self.found = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)

    def __call__(self, x_iter: torch.Tensor, logits: torch.Tensor) -> None:
        new = (logits.argmax(1) != self.y) & ~self.found
        self.x_adv[new] = x_iter[new]
        self.found |= new


def tracked_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, x_start: torch.Tensor, steps: int,
                step_size: float, loss_fn: LossFn, meter: CostMeter) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pgd_loop` that keeps each sample's first misclassified iterate (the last iterate included, at one extra
    forward pass).  Returns ``(x_adv, found)``: that iterate where ``found``, else the last iterate.  Charges
    ``2 * steps + 1`` passes over ``len(x)`` samples to ``meter``."""
    track = _FirstSuccess(y, x)
    last = pgd_loop(model, x, y, eps, x_start, steps, step_size, loss_fn, on_logits=track)
    with torch.no_grad():
        track(last, model(last))
    meter.add(2 * steps + 1, x.shape[0])
    return torch.where(track.found.view(-1, *[1] * (x.dim() - 1)), track.x_adv, last), track.found


@register_attack("pgd")
class PGD(Attack):
    """PGD L∞ with cross-entropy loss; see the module docstring."""

    def __init__(self, steps: int = 40, step_size: float = 0.01, restarts: int = 1, random_start: bool = True):
        self.steps = check_int("steps", steps, 0)
        self.step_size = check_nonneg("step_size", step_size)
        self.restarts = check_int("restarts", restarts, 1)
        if not isinstance(random_start, bool):
            raise ValueError(f"random_start must be a bool, got {random_start!r}")
        if restarts > 1 and not random_start:
            raise ValueError(f"restarts={restarts} without random_start would repeat the same deterministic run; "
                             "use restarts=1 or random_start=True")
        self.random_start = random_start

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The per-sample loss to maximise (``[B]``)."""
        return cross_entropy_loss(logits, y)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                generator: torch.Generator | None, meter: CostMeter) -> torch.Tensor:
        x_adv = x.clone()
        found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            idx = (~found).nonzero().flatten()
            if not idx.numel():
                break
            xs, ys = x[idx], y[idx]
            start = random_start_point(xs, eps, generator) if self.random_start else xs
            x_adv[idx], found[idx] = tracked_pgd(model, xs, ys, eps, start, self.steps, self.step_size, self.loss,
                                                 meter)
        return x_adv
