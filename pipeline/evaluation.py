"""Evaluation of one trained model on the fixed test subset: ACC, ERA per attack, VRA, per sample.

Metrics are proportions over the same ``n`` images of the committed seeded subset, each with a 95% Wilson interval.
ERA(attack) counts the samples the model classifies correctly and the attack (re-checked adversarial examples only,
:mod:`pipeline.attacks.base`) does not break.  Invariants checked here on every run, raising instead of writing
metrics: a verified sample is correctly classified, and no attack ever breaks a verified sample (either would be a
soundness bug); hence VRA <= every ERA <= ACC, which is asserted on the totals too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.attacks import Attack
from pipeline.bounds import verify
from pipeline.utils import wilson_interval
from pipeline.utils.progress import progress

__all__ = ["SampleResults", "AttackCost", "evaluate_model", "run_attacks", "equal_budget", "check_invariants",
           "summarize"]


@dataclass
class SampleResults:
    ids: list[str]
    labels: list[int]
    predictions: list[int]
    verified: list[bool]
    verified_by: list[str | None]
    min_margin_lb: list[float]
    # what min_margin_lb had to exceed: margin_tol + the sample's rounding-error deduction (pipeline.bounds.verify)
    verify_threshold: list[float | None] = field(default_factory=list)
    broken_by: dict[str, list[bool]] = field(default_factory=dict)  # attack -> per-sample re-checked success
    attack_cost: dict[str, "AttackCost"] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "attack_cost"}


@dataclass
class AttackCost:
    passes: int       # forward+backward passes, summed over the evaluation chunks
    seconds: float


def run_attacks(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, attacks: dict[str, Attack],
                seed: int, chunk: int, progress_label: str | None = None
                ) -> tuple[dict[str, list[bool]], dict[str, AttackCost]]:
    """Each attack on every sample, ``chunk`` at a time, from its own seeded generator (reproducible per attack);
    with ``progress_label`` a bar with an ETA per attack."""
    broken: dict[str, list[bool]] = {}
    cost: dict[str, AttackCost] = {}
    for i, (name, attack) in enumerate(attacks.items()):
        gen = torch.Generator().manual_seed(seed + 1000 * (i + 1))
        ok: list[bool] = []
        passes, seconds = 0, 0.0
        starts = range(0, len(x), chunk)
        if progress_label is not None:
            starts = progress(starts, desc=f"{progress_label} attack {name} ({len(x)} images)", unit="chunk")
        for start in starts:
            res = attack(model, x[start:start + chunk], y[start:start + chunk], eps, generator=gen)
            ok += res.success.tolist()
            passes, seconds = passes + res.passes, seconds + res.seconds
        broken[name], cost[name] = ok, AttackCost(passes, seconds)
    return broken, cost


def equal_budget(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, attacks: dict[str, Attack],
                 budget_passes: int | None, seed: int, reference: str = "interval",
                 max_runs: int | None = None) -> dict[str, dict[str, Any]]:
    """Table I: each attack gets the same budget of forward+backward passes over the batch ``x``.

    ``budget_passes=None`` takes the ``reference`` attack's own measured cost as the budget (the reference runs once).
    Every other attack runs again and again from fresh random starts on the samples it has not broken yet, while the
    next run (estimated by the cost of the previous one) still fits the budget, or until ``max_runs`` runs are done
    (``run_cap_reached``: the budget was not spent).  Every attack runs at least once; if that one run alone costs
    more than a fixed budget, its entry says ``over_budget``.  Table I shows both flags.  Success rate is over the
    samples the model classifies correctly; ``passes`` and wall ``seconds`` are what each attack spent.
    """
    with torch.no_grad():
        correct = (model(x).argmax(1) == y)
    n_correct = int(correct.sum())
    out: dict[str, dict[str, Any]] = {}
    order = [reference] + [a for a in attacks if a != reference] if budget_passes is None else list(attacks)
    budget = budget_passes
    for i, name in enumerate(order):
        gen = torch.Generator().manual_seed(seed + 7000 + i)
        broken = ~correct
        spent, seconds, runs, last, capped = 0.0, 0.0, 0, 0.0, False
        while (budget is None and runs == 0) or (budget is not None and (runs == 0 or spent + last <= budget)):
            todo = (~broken).nonzero().flatten()
            if not todo.numel():
                break
            if max_runs is not None and runs >= max_runs:
                capped = True
                break
            res = attacks[name](model, x[todo], y[todo], eps, generator=gen)
            last = res.passes * todo.numel() / len(x)  # in passes over the whole batch
            spent, seconds, runs = spent + last, seconds + res.seconds, runs + 1
            broken[todo] |= res.success.to(broken.device)
            if budget is None or not getattr(attacks[name], "random_start", True):
                break  # the reference runs once; a deterministic attack would only repeat itself
        if budget is None:
            budget = max(1, math.ceil(spent))  # the reference's own cost: never "over" its own budget
        succ = int((broken & correct).sum())
        out[name] = {"success": succ, "attacked": n_correct, "rate": succ / max(1, n_correct),
                     "passes": math.ceil(spent), "seconds": seconds, "runs": runs,
                     "over_budget": budget is not None and spent > budget,  # one run alone cost more than the budget
                     "run_cap_reached": capped}  # stopped by max_runs before the budget was spent
    return {"budget_passes": budget, "attacks": out}


def check_invariants(s: "SampleResults") -> None:
    """Soundness invariants, per sample and on the totals; raises AssertionError naming the samples."""
    bad = [s.ids[i] for i, (v, p, t) in enumerate(zip(s.verified, s.predictions, s.labels)) if v and p != t]
    if bad:
        raise AssertionError(f"soundness bug: samples {bad} verified but misclassified")
    for name, broken in s.broken_by.items():
        bad = [s.ids[i] for i, (v, b) in enumerate(zip(s.verified, broken)) if v and b]
        if bad:
            raise AssertionError(f"soundness bug: samples {bad} verified at this ε but broken by the {name} attack "
                                 f"(re-checked adversarial examples)")
    acc, vra = sum(p == t for p, t in zip(s.predictions, s.labels)), sum(s.verified)
    for name, broken in s.broken_by.items():
        era = sum(p == t and not b for p, t, b in zip(s.predictions, s.labels, broken))
        if not vra <= era <= acc:
            raise AssertionError(f"invariant VRA <= ERA({name}) <= ACC violated: {vra} <= {era} <= {acc}")


def evaluate_model(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ids: list[str], eps: float,
                   domains: list[str], dtype: torch.dtype, margin_tol: float, batch_size: int,
                   attacks: dict[str, Attack] | None = None, attack_seed: int = 0,
                   attack_chunk: int = 256, progress_label: str | None = None) -> SampleResults:
    """Clean predictions, certification and attacks on every sample of ``x`` ``[N, C, H, W]`` (pixels) at ``eps``."""
    model.eval()
    with torch.no_grad():
        preds = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    res = verify(model, x, y, eps, domains, dtype=dtype, margin_tol=margin_tol, batch_size=batch_size,
                 progress_label=progress_label)
    out = SampleResults(ids, y.tolist(), preds.tolist(), res.verified, res.domain, res.min_margin_lb,
                        res.threshold)
    if attacks:
        out.broken_by, out.attack_cost = run_attacks(model, x, y, eps, attacks, attack_seed, attack_chunk,
                                                     progress_label)
    check_invariants(out)
    return out


def summarize(s: SampleResults) -> dict[str, Any]:
    """ACC, VRA and ERA per attack (proportions of the ``n`` samples, with 95% Wilson intervals), which domain
    verified how many samples, and each attack's cost."""
    n = len(s.labels)
    correct = sum(p == t for p, t in zip(s.predictions, s.labels))
    verified = sum(s.verified)
    by: dict[str, int] = {}
    for d in s.verified_by:
        if d is not None:
            by[d] = by.get(d, 0) + 1
    out = {"n": n, "acc": correct / n, "acc_ci95": list(wilson_interval(correct, n)),
           "vra": verified / n, "vra_ci95": list(wilson_interval(verified, n)), "verified_by": by}
    for name, broken in s.broken_by.items():
        robust = sum(p == t and not b for p, t, b in zip(s.predictions, s.labels, broken))
        out[f"era_{name}"] = robust / n
        out[f"era_{name}_ci95"] = list(wilson_interval(robust, n))
    if s.attack_cost:
        out["attack_cost"] = {k: {"passes": c.passes, "seconds": c.seconds} for k, c in s.attack_cost.items()}
    return out
