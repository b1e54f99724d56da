"""The interval attack (Wang et al., "MixTrain: scalable training of verifiably robust neural networks", Algorithm 1;
also Wang, Chen, Abdou & Jana, "Enhancing gradient-based attacks with symbolic intervals", ICML 2019 workshop).

Threat model: L∞ ball of radius ``eps`` around the pixel image, intersected with [0, 1] (pixel space).
Shapes: ``x`` ``[B, C, H, W]`` pixels in [0, 1], ``y`` ``[B]``; the result has the shape of ``x``.

Idea: a gradient at a point sees only its neighbourhood; a sound bound over a *box* around the point sees the whole
box, and the gradient of the box's worst case w.r.t. the box centre (the "interval gradient") points to where the box
holds violations.  Per iteration, for each sample not yet broken:

1. **box size**: the smallest ``δ = min(delta_init * growth**k, eps)``, ``k = 0, 1, ...`` (a ladder of at most
   ``max_delta_tries`` values, searched by bisection) for which the symbolic linear relaxation (``bound_margins(model, x', y, δ,
   "symbolic_linear")``, box ``[x' - δ, x' + δ] ∩ [0, 1]``) reports a possible violation, i.e. some margin lower
   bound ``lb(z_y - z_j) <= 0``, j ≠ y.  If none does, the largest ``δ`` tried is used.  ``δ`` never exceeds ε.
2. **interval gradient step**: ``x' <- project(x' + step_size * sign(∇_{x'} verified_loss(lb(x', δ), y)))`` onto the
   ε-ball of ``x`` ∩ [0, 1], where ``verified_loss`` is the bound engine's cross-entropy on the worst-case logits
   ``-lb``.  No relaxation is re-implemented here: the bounds and their gradients come from ``pipeline.bounds``.
3. **early stop**: one forward pass; a sample whose ``x'`` is misclassified is done.

After ``iterations`` iterations, PGD (cross-entropy, no random start, ``pgd_steps`` steps of ``pgd_step_size``,
first misclassified iterate kept) runs from the final ``x'`` of every sample still unbroken.  By default the attack
starts at ``x`` and draws no random numbers; ``random_start=True`` starts it at a point drawn uniformly in the ball
from ``generator`` (used for restarts under an equal budget, Table I, and for Fig. 2's many starts).

Defaults: ``iterations=20`` (the paper), ``step_size=0.01`` and ``pgd_steps=40, pgd_step_size=0.01`` (the paper's
MNIST PGD setting, so the PGD tail alone equals the PGD column's attack without random start); ``delta_init=1e-3``
and ``growth=2.0`` (the paper grows δ geometrically from a small start; doubling reaches ε = 0.3 in 9 tries and
ε = 2/255 in 3), ``max_delta_tries=10`` (enough for ε ≤ 0.5 from 1e-3; caps the search otherwise) and
``max_samples_per_chunk=8`` (bound propagations run on at most this many samples at once: the symbolic relaxation
stores ``2 (d + 1)`` input-coefficient rows per neuron, ~80 MB a sample on MNIST_Small and GBs on CIFAR_Large).

Cost, counted analytically (noise-free) in passes: the symbolic relaxation pushes, per sample, the lower and upper
equations' mid/radius forms (``2 d + 2`` rows, ``d`` = input dimension: 784 MNIST, 3072 CIFAR) plus its companion
interval (2 rows) through every layer, so one propagation costs as much as ``2 (d + 2)`` forward passes
(:func:`bound_passes`; an upper bound on the rows: before the first ReLU one product over ``d + 1`` rows suffices),
and the backward pass of the interval gradient as much again.  Each δ try is charged ``2 (d + 2)``, the gradient step
``2 × 2 (d + 2)`` (forward with autograd + backward), the early-stop check 1, and the PGD tail ``2 * pgd_steps + 1``,
each over the samples it runs on.  Checked by timing (CPU, 2 threads, MNIST_Small, 8 samples): one propagation took
1.4× a plain forward pass over ``2 (d + 2) × 8`` images (the ReLU relaxation's elementwise work on ``d × neurons``
tensors is the extra), propagation + gradient 1.04× a forward + backward over those images.  Against a forward +
backward of the 8 samples themselves the wall-clock ratio is far smaller (~150 instead of 3144), because a
small-batch pass is dominated by per-call overhead, not arithmetic; the count is in arithmetic, which is what scales.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.attacks.base import Attack, CostMeter, check_int, check_nonneg, project, register_attack
from pipeline.attacks.pgd import cross_entropy_loss, random_start_point, tracked_pgd
from pipeline.bounds import bound_margins, verified_loss

__all__ = ["DOMAIN", "bound_passes", "IntervalAttack"]

#: the bound domain of the attack (the paper's symbolic linear relaxation)
DOMAIN = "symbolic_linear"


def bound_passes(sample: torch.Tensor) -> int:
    """Forward passes one ``symbolic_linear`` propagation is charged per sample: ``2 (d + 2)``, ``d`` = input size."""
    return 2 * (sample[0].numel() + 2)


def _worst_margin(lb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``min_{j != y} lb[:, j]`` ``[B]`` (entry ``y`` is a zero by construction, not a margin)."""
    return lb.scatter(1, y[:, None], float("inf")).amin(1)


@register_attack("interval")
class IntervalAttack(Attack):
    """The MixTrain interval attack; see the module docstring."""

    def __init__(self, iterations: int = 20, step_size: float = 0.01, delta_init: float = 1e-3, growth: float = 2.0,
                 max_delta_tries: int = 10, pgd_steps: int = 40, pgd_step_size: float = 0.01,
                 max_samples_per_chunk: int = 8, random_start: bool = False):
        self.iterations = check_int("iterations", iterations, 0)
        self.step_size = check_nonneg("step_size", step_size)
        self.delta_init = check_nonneg("delta_init", delta_init)
        if self.delta_init <= 0:
            raise ValueError(f"delta_init must be > 0, got {delta_init!r}")
        self.growth = check_nonneg("growth", growth)
        if self.growth <= 1:
            raise ValueError(f"growth must be > 1, got {growth!r}")
        self.max_delta_tries = check_int("max_delta_tries", max_delta_tries, 1)
        self.pgd_steps = check_int("pgd_steps", pgd_steps, 0)
        self.pgd_step_size = check_nonneg("pgd_step_size", pgd_step_size)
        self.max_samples_per_chunk = check_int("max_samples_per_chunk", max_samples_per_chunk, 1)
        if not isinstance(random_start, bool):
            raise ValueError(f"random_start must be true or false, got {random_start!r}")
        self.random_start = random_start

    def deltas(self, eps: float) -> list[float]:
        """The box half-widths tried, in order: ``delta_init * growth**k`` capped at ``eps``, at most
        ``max_delta_tries`` of them, ending at the first that reaches ``eps``."""
        out: list[float] = []
        delta = self.delta_init
        while len(out) < self.max_delta_tries:
            out.append(min(delta, eps))
            if delta >= eps:
                break
            delta *= self.growth
        return out

    def _chunks(self, idx: torch.Tensor) -> list[torch.Tensor]:
        return list(idx.split(self.max_samples_per_chunk))

    @torch.no_grad()
    def find_delta(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                   meter: CostMeter) -> torch.Tensor:
        """Per sample ``[n]``: the index into :meth:`deltas` of the smallest δ whose box the relaxation cannot prove
        safe (the last δ if it proves every smaller box safe), found by bisection over the ladder: a larger box only
        loosens the relaxation, so "possible violation" is (up to the relaxation's own non-monotone corner cases)
        monotone in δ, and ``ceil(log2(len(ladder)))`` propagations replace up to ``len(ladder) - 1``.  Indices, not
        values, so a float32 copy can never round a δ above ε."""
        deltas = self.deltas(eps)
        lo = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        hi = torch.full((x.shape[0],), len(deltas) - 1, dtype=torch.long, device=x.device)
        cost = bound_passes(x)
        while bool((lo < hi).any()):
            open_ = lo < hi
            mid = (lo + hi) // 2
            for k in torch.unique(mid[open_]).tolist():
                for idx in self._chunks((open_ & (mid == k)).nonzero().flatten()):
                    lb, _ = bound_margins(model, x[idx], y[idx], deltas[k], DOMAIN)
                    meter.add(cost, idx.numel())
                    violated = _worst_margin(lb, y[idx]) <= 0
                    hi[idx[violated]] = k
                    lo[idx[~violated]] = k + 1
        return hi

    def interval_gradient(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: list[float],
                          which: torch.Tensor, meter: CostMeter) -> torch.Tensor:
        """∇ w.r.t. the box centre of the verified loss over the box of half-width ``delta[which[i]]`` around
        ``x[i]``; samples sharing a δ are bounded together (``bound_margins`` takes one radius per call)."""
        grad = torch.zeros_like(x)
        cost = 2 * bound_passes(x)
        for k in torch.unique(which).tolist():
            for idx in self._chunks((which == k).nonzero().flatten()):
                centre = x[idx].detach().requires_grad_(True)
                lb, _ = bound_margins(model, centre, y[idx], delta[k], DOMAIN)
                (grad[idx],) = torch.autograd.grad(verified_loss(lb, y[idx]), centre)
                meter.add(cost, idx.numel())
        return grad

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                generator: torch.Generator | None, meter: CostMeter) -> torch.Tensor:
        x_cur = random_start_point(x, eps, generator) if self.random_start else x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(self.iterations):
            act = (~done).nonzero().flatten()
            if not act.numel():
                break
            xa, ya = x_cur[act], y[act]
            which = self.find_delta(model, xa, ya, eps, meter)
            grad = self.interval_gradient(model, xa, ya, self.deltas(eps), which, meter)
            x_cur[act] = project(xa + self.step_size * grad.sign(), x[act], eps)
            with torch.no_grad():
                done[act] = model(x_cur[act]).argmax(1) != ya
            meter.add(1, act.numel())
        rest = (~done).nonzero().flatten()
        if rest.numel() and self.pgd_steps > 0:
            x_cur[rest], _ = tracked_pgd(model, x[rest], y[rest], eps, x_cur[rest], self.pgd_steps,
                                         self.pgd_step_size, cross_entropy_loss, meter)
        return x_cur
