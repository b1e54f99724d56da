"""The interval attack (Wang et al., "MixTrain: scalable training of verifiably robust neural networks", Algorithm 1;
also Wang, Chen, Abdou & Jana, "Enhancing gradient-based attacks with symbolic intervals", ICML 2019 workshop; the
authors' code: github.com/tcwangshiqi-columbia/Interval-Attack, ``interval_attack.py``).

Threat model: L∞ ball of radius ``eps`` around the pixel image, intersected with [0, 1] (pixel space).
Shapes: ``x`` ``[B, C, H, W]`` pixels in [0, 1], ``y`` ``[B]``; the result has the shape of ``x``.

Idea: a gradient at a point sees only its neighbourhood; the symbolic linear relaxation of a *box* around the point
bounds the margins over the whole box by linear equations in the input, and the input coefficients of those
equations (the "interval gradient") point to where in the box a violation may lie.  Per iteration, for each sample
not yet broken (docs/attacks.md compares every step with the paper and the authors' code):

1. **box**: the ladder ``δ_k = min(delta_init * growth**k, max_delta_frac * eps)``, ``k = 0, 1, ...`` (at most
   ``max_delta_tries`` values, ending at the first that reaches the cap) is scanned from the smallest box up; at each
   ``δ`` the symbolic linear relaxation (:data:`DOMAIN`, box ``[x' - δ, x' + δ] ∩ [0, 1]``, the same bound code that
   certifies VRA) bounds every margin ``z_y - z_j``.  The scan stops at the first box the relaxation cannot prove
   safe (some lower bound ``lb_j <= 0``).  If it proves every box of the ladder safe, the sample is *stuck*: it does
   not move, and since its point does not change, the next iterations would only repeat the same scan, so it leaves
   the interval phase (the authors' code skips it in every iteration; the result is the same, at less cost).
2. **interval gradient step**: ``d = argmin_j lb_j`` is the class the relaxation finds most able to overtake ``y``
   (the authors take the largest upper bound of ``z_j - z_y``, the same class); ``g`` is the input coefficient vector
   of the relaxation's linear *lower* equation of the margin ``z_y - z_d`` over that box (a constant: the equation is
   linear), and ``x' <- project(x' - step * sign(g))`` onto the ε-ball of ``x`` ∩ [0, 1]: the corner of the box
   where that equation is smallest.  ``step`` is the box half-width ``δ`` (``step_size=None``, the default) or a fixed
   ``step_size``.  No autograd runs through the relaxation; nothing of the relaxation is re-implemented here.
3. **early stop**: one forward pass; a sample whose ``x'`` is misclassified is done.

After ``iterations`` iterations, PGD (cross-entropy, no random start, ``pgd_steps`` steps of ``pgd_step_size``,
first misclassified iterate kept) runs from the final ``x'`` of every sample still unbroken.  With
``pgd_between=True`` a PGD run also precedes every interval step (the schedule of the authors' released code:
PGD, interval step, PGD, ..., PGD), each from the point the previous step left.  By default the attack starts at
``x`` and draws no random numbers; ``random_start=True`` starts it at a point drawn uniformly in the ball from
``generator`` (used for Fig. 2's many starts).

Defaults: ``iterations=20`` (the paper); ``delta_init=0.01``, ``growth=3``, ``max_delta_frac=0.5`` (the authors'
code: ``estep = 0.01`` times 1, 3, 9, ... capped at ``ε / 2``, i.e. 0.01, 0.03, 0.09, 0.15 at ε = 0.3);
``max_delta_tries=10`` (a cap on the ladder's length; the ε / 2 cap ends it first for ε ≤ 0.5);
``pgd_steps=40, pgd_step_size=0.01`` (the paper's MNIST PGD setting, so the PGD tail alone equals the PGD column's
attack without random start); ``max_samples_per_chunk=8`` (bound propagations run on at most this many samples at
once: the relaxation stores ``2 (d + 1)`` input-coefficient rows per neuron, ~80 MB a sample on MNIST_Small and GBs
on CIFAR_Large).

Cost, counted analytically (noise-free) in passes: the symbolic relaxation pushes, per sample, the lower and upper
equations' mid/radius forms (``2 d + 2`` rows, ``d`` = input dimension: 784 MNIST, 3072 CIFAR) plus its companion
interval (2 rows) through every layer, so one propagation costs as much as ``2 (d + 2)`` forward passes
(:func:`bound_passes`; an upper bound on the rows: before the first ReLU one product over ``d + 1`` rows suffices).
Each box tried is charged ``2 (d + 2)`` (the interval gradient comes with the propagation of the box it is taken
on: no backward pass), the early-stop check 1, and every PGD run ``2 * pgd_steps + 1``, each over the samples it
runs on.  Checked by timing (CPU, 2 threads, MNIST_Small, 8 samples): one propagation took 1.4× a plain forward pass
over ``2 (d + 2) × 8`` images (the ReLU relaxation's elementwise work on ``d × neurons`` tensors is the extra).
Against a forward of the 8 samples themselves the wall-clock ratio is far smaller, because a small-batch pass is
dominated by per-call overhead, not arithmetic; the count is in arithmetic, which is what scales.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.attacks.base import Attack, CostMeter, check_int, check_nonneg, project, register_attack
from pipeline.attacks.pgd import cross_entropy_loss, random_start_point, tracked_pgd
from pipeline.bounds import SymbolicLinearDomain, fold_spec, input_box, margin_spec, propagate, to_ops

__all__ = ["DOMAIN", "bound_passes", "margin_equations", "IntervalAttack"]

#: the bound domain of the attack (the paper's symbolic linear relaxation)
DOMAIN = "symbolic_linear"


def bound_passes(sample: torch.Tensor) -> int:
    """Forward passes one ``symbolic_linear`` propagation is charged per sample: ``2 (d + 2)``, ``d`` = input size."""
    return 2 * (sample[0].numel() + 2)


@torch.no_grad()
def margin_equations(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     delta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The symbolic linear relaxation of the margins ``z_y - z_j`` over the box ``[x - δ, x + δ] ∩ [0, 1]``.

    Returns ``(lb, coef)``: ``lb`` ``[n, 10]``, the sound lower bounds (what ``bound_margins(..., DOMAIN)`` returns;
    entry ``y`` is 0), and ``coef`` ``[n, *x.shape[1:], 10]``, the pixel-space input coefficients of each margin's
    linear lower equation (zero where the box has no width).  ``model`` must be in eval mode."""
    dtype = torch.float32
    ops = fold_spec(to_ops(model, dtype), margin_spec(y, 10, dtype))
    lo, hi = input_box(x.to(dtype), delta)
    state = propagate(ops, SymbolicLinearDomain.from_box(lo, hi))
    lb, _ = state.concretize()
    _, la, _, _ = state.parts()  # la [n, d, 10]: coefficients over t, where x = centre + radius * t
    if la is not None and not isinstance(la, torch.Tensor):
        la = la.to_dense()  # a compact (window-form) row store of the bound engine, if the last layer kept one
    n = x.shape[0]
    if la is None:
        return lb, torch.zeros(n, *x.shape[1:], lb.shape[1], dtype=lb.dtype, device=lb.device)
    radius = ((hi - lo) / 2).flatten(1)[:, :, None]
    rows = la.reshape(n, -1, lb.shape[1])
    coef = torch.where(radius > 0, rows / radius.clamp_min(1e-30), torch.zeros_like(rows))
    return lb, coef.view(n, *x.shape[1:], lb.shape[1])


def _worst_class(lb: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min_{j != y} lb[:, j], argmin)`` ``[n]`` each (entry ``y`` is a zero by construction, not a margin)."""
    return lb.scatter(1, y[:, None], float("inf")).min(1)


@register_attack("interval")
class IntervalAttack(Attack):
    """The MixTrain interval attack; see the module docstring."""

    def __init__(self, iterations: int = 20, delta_init: float = 0.01, growth: float = 3.0,
                 max_delta_frac: float = 0.5, max_delta_tries: int = 10, step_size: float | None = None,
                 pgd_steps: int = 40, pgd_step_size: float = 0.01, pgd_between: bool = False,
                 max_samples_per_chunk: int = 8, random_start: bool = False):
        self.iterations = check_int("iterations", iterations, 0)
        self.delta_init = check_nonneg("delta_init", delta_init)
        if self.delta_init <= 0:
            raise ValueError(f"delta_init must be > 0, got {delta_init!r}")
        self.growth = check_nonneg("growth", growth)
        if self.growth <= 1:
            raise ValueError(f"growth must be > 1, got {growth!r}")
        self.max_delta_frac = check_nonneg("max_delta_frac", max_delta_frac)
        if not 0 < self.max_delta_frac <= 1:
            raise ValueError(f"max_delta_frac must be in (0, 1] (the box never exceeds the ε-ball), "
                             f"got {max_delta_frac!r}")
        self.max_delta_tries = check_int("max_delta_tries", max_delta_tries, 1)
        self.step_size = None if step_size is None else check_nonneg("step_size", step_size)
        self.pgd_steps = check_int("pgd_steps", pgd_steps, 0)
        self.pgd_step_size = check_nonneg("pgd_step_size", pgd_step_size)
        for name, flag in (("pgd_between", pgd_between), ("random_start", random_start)):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be true or false, got {flag!r}")
        self.pgd_between = pgd_between
        self.max_samples_per_chunk = check_int("max_samples_per_chunk", max_samples_per_chunk, 1)
        self.random_start = random_start

    def deltas(self, eps: float) -> list[float]:
        """The box half-widths tried, smallest first: ``delta_init * growth**k`` capped at ``max_delta_frac * eps``
        (never above ε), at most ``max_delta_tries`` of them, ending at the first that reaches the cap."""
        cap = min(self.max_delta_frac * eps, eps)
        out: list[float] = []
        delta = self.delta_init
        while len(out) < self.max_delta_tries:
            out.append(min(delta, cap))
            if delta >= cap:
                break
            delta *= self.growth
        return out

    def _chunks(self, idx: torch.Tensor) -> list[torch.Tensor]:
        return list(idx.split(self.max_samples_per_chunk))

    @torch.no_grad()
    def interval_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                      meter: CostMeter) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Steps 1 and 2 for the points ``x`` ``[n, ...]``: returns ``(direction, step, found)``, where
        ``direction`` ``[n, ...]`` is ``-sign`` of the interval gradient of the first box (smallest first) the
        relaxation cannot prove safe, ``step`` ``[n]`` the step length (that box's δ unless ``step_size`` is set)
        and ``found`` ``[n]`` whether such a box exists (``False``: stuck, zero direction and step)."""
        n = x.shape[0]
        direction = torch.zeros_like(x)
        step = torch.zeros(n, dtype=x.dtype, device=x.device)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        cost = bound_passes(x)
        for delta in self.deltas(eps):
            todo = (~found).nonzero().flatten()
            if not todo.numel():
                break
            for idx in self._chunks(todo):
                lb, coef = margin_equations(model, x[idx], y[idx], delta)
                meter.add(cost, idx.numel())
                worst, d = _worst_class(lb, y[idx])
                hit = worst <= 0
                if bool(hit.any()):
                    rows = idx[hit]
                    g = coef[hit].movedim(-1, 1)[torch.arange(int(hit.sum()), device=x.device), d[hit]]
                    direction[rows] = -g.sign().to(x.dtype)
                    step[rows] = delta if self.step_size is None else self.step_size
                    found[rows] = True
        return direction, step, found

    def _pgd(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, x_cur: torch.Tensor,
             done: torch.Tensor, meter: CostMeter) -> None:
        """PGD from ``x_cur`` on the samples not ``done``; updates ``x_cur`` and ``done`` in place."""
        rest = (~done).nonzero().flatten()
        if rest.numel() and self.pgd_steps > 0:
            x_cur[rest], hit = tracked_pgd(model, x[rest], y[rest], eps, x_cur[rest], self.pgd_steps,
                                           self.pgd_step_size, cross_entropy_loss, meter)
            done[rest] = hit

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                generator: torch.Generator | None, meter: CostMeter) -> torch.Tensor:
        x_cur = random_start_point(x, eps, generator) if self.random_start else x.clone()
        done = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)   # broken: its point is frozen
        stuck = torch.zeros_like(done)                                      # every box proven safe: left the phase
        view = (-1,) + (1,) * (x.dim() - 1)
        for _ in range(self.iterations):
            if self.pgd_between:
                self._pgd(model, x, y, eps, x_cur, done, meter)
                stuck.zero_()  # PGD moved the stuck points: their boxes are new
            act = (~done & ~stuck).nonzero().flatten()
            if not act.numel():
                break
            direction, step, found = self.interval_step(model, x_cur[act], y[act], eps, meter)
            stuck[act[~found]] = True
            moved = act[found]
            if not moved.numel():
                continue
            x_cur[moved] = project(x_cur[moved] + step[found].view(view) * direction[found], x[moved], eps)
            with torch.no_grad():
                done[moved] = model(x_cur[moved]).argmax(1) != y[moved]
            meter.add(1, moved.numel())
        self._pgd(model, x, y, eps, x_cur, done, meter)
        return x_cur
