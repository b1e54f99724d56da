"""The attacks (pipeline/attacks): registry, projection and the success re-check, cost counting, PGD/CW/interval
behaviour, soundness against the bound engine (a verified sample is never broken), and strength against an
independent PGD (torchattacks, test-only dependency).

Models are tiny random nets (tests/bound_helpers.py) and, where real MNIST is available, a small FC net trained for a
few seconds in a module fixture.
"""
from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

from pipeline.attacks import (ATTACKS, CW, PGD, Attack, CostMeter, IntervalAttack, bound_passes, cw_margin_loss,
                              get_attack, pgd_perturb, project, recheck)
from pipeline.bounds import verify
from pipeline.models.zoo import CertifiedNet
from tests.bound_helpers import exact_margin_min, make_case, make_tiny_fc, one_thread_per_module
from tests.conftest import DATA_ROOT, needs_data

interval_mod = importlib.import_module("pipeline.attacks.interval")
_one_thread = one_thread_per_module  # autouse: tiny tensors, one intra-op thread


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def quick_attacks(steps: int = 10) -> dict[str, Attack]:
    """Every registered attack with a small budget (the interval attack fails the test if one is not listed)."""
    attacks = {"pgd": PGD(steps=steps, step_size=0.02, restarts=2),
               "cw": CW(steps=steps, step_size=0.02, restarts=2),
               "interval": IntervalAttack(iterations=4, delta_init=0.005, pgd_steps=steps, pgd_step_size=0.02)}
    assert set(attacks) == set(ATTACKS), "a registered attack is missing from the test's list"
    return attacks


def predicted_case(kind: str, seed: int, batch: int, eps: float):
    """A random net and inputs labelled with the net's own prediction (so every sample starts correct)."""
    case = make_case(kind, seed, batch=batch, eps=eps)
    with torch.no_grad():
        y = case.model(case.x).argmax(1)
    return case.model, case.x, y


class Threshold(nn.Module):
    """Class 0 iff mean pixel > 0.5 (logit z_0 = 10 (mean - 0.5), z_1..9 = 0): robustness is known exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z0 = 10.0 * (x.flatten(1).mean(1) - 0.5)
        return torch.cat([z0[:, None], torch.zeros(x.shape[0], 9)], 1)


def assert_in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> None:
    assert torch.isfinite(x_adv).all()
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


# ----------------------------------------------------------------------------------------------------------------
# Registry, parameters, projection, re-check, mode/device handling
# ----------------------------------------------------------------------------------------------------------------

def test_registry_names_and_unknown_name():
    assert {"pgd", "cw", "interval"} <= set(ATTACKS)
    assert get_attack("pgd") is PGD and get_attack("cw") is CW and get_attack("interval") is IntervalAttack
    with pytest.raises(ValueError, match=r"unknown attack 'fgsm'.*'cw'.*'interval'.*'pgd'"):
        get_attack("fgsm")


@pytest.mark.parametrize("make", [lambda: PGD(steps=-1), lambda: PGD(step_size=float("nan")),
                                  lambda: PGD(restarts=0), lambda: PGD(restarts=2, random_start=False),
                                  lambda: PGD(steps=2.5), lambda: CW(kappa=-1.0),
                                  lambda: IntervalAttack(growth=1.0), lambda: IntervalAttack(delta_init=0.0),
                                  lambda: IntervalAttack(max_samples_per_chunk=0),
                                  lambda: IntervalAttack(max_delta_frac=0.0),
                                  lambda: IntervalAttack(max_delta_frac=1.5),
                                  lambda: IntervalAttack(step_size=-0.1), lambda: IntervalAttack(pgd_between=1)])
def test_bad_parameters_are_rejected(make):
    with pytest.raises(ValueError, match="must be|would repeat"):
        make()


def test_bad_inputs_are_rejected():
    model, x, y = predicted_case("fc", 0, 3, 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PGD(steps=1)(model, x + 1.0, y, 0.1)
    with pytest.raises(ValueError, match="shape"):
        PGD(steps=1)(model, x, y[:2], 0.1)
    with pytest.raises(ValueError, match="eps"):
        PGD(steps=1)(model, x, y, -0.1)


def test_project_lands_in_ball_and_unit_box():
    g = gen(0)
    x = torch.rand(16, 1, 5, 5, generator=g)
    x = torch.where(torch.rand(x.shape, generator=g) < 0.2, x.round(), x)
    far = torch.randn(x.shape, generator=g) * 3
    for eps in (0.0, 0.03, 0.3, 2.0):
        p = project(far, x, eps)
        assert_in_ball(p, x, eps)
        inside = (x + (torch.rand(x.shape, generator=g) - 0.5) * eps).clamp(0, 1)
        assert torch.equal(project(inside, x, eps), inside)  # points already inside are untouched


def test_recheck_rejects_forged_successes():
    model = Threshold()
    eps = 0.01
    x = torch.full((6, 1, 2, 2), 0.505)
    y = torch.zeros(6, dtype=torch.long)
    x[0] = 0.52  # robust at eps: the whole ball has mean > 0.5
    forged = torch.stack([
        torch.full((1, 2, 2), 0.40),           # 0: misclassified but far outside the ball
        torch.full((1, 2, 2), 0.514),          # 1: inside the ball but correctly classified
        torch.full((1, 2, 2), 0.497),          # 2: inside and misclassified -> the only honest success
        torch.full((1, 2, 2), 0.495 - 5e-7),   # 3: outside by float-rounding slack only -> allowed
        torch.full((1, 2, 2), 0.495 - 1e-4),   # 4: outside by more than the slack
        torch.full((1, 2, 2), float("nan")),   # 5: not a point
    ])
    assert recheck(model, forged, x, y, eps).tolist() == [False, False, True, True, False, False]
    out_of_range = torch.full((1, 1, 2, 2), -0.001)
    assert recheck(model, out_of_range, torch.zeros(1, 1, 2, 2), y[:1], 0.1).tolist() == [False]


class Forger(Attack):
    """An "attack" that reports points outside the ball / NaN; the base class must not count them."""

    def __init__(self, offset: float):
        self.offset = offset

    def perturb(self, model, x, y, eps, generator, meter):
        return x + self.offset


@pytest.mark.parametrize("offset", [-0.2, float("nan")])
def test_base_projects_and_rechecks_what_an_attack_reports(offset):
    model = Threshold()
    x = torch.full((2, 1, 2, 2), 0.52)
    y = torch.zeros(2, dtype=torch.long)
    res = Forger(offset)(model, x, y, 0.01)
    assert_in_ball(res.x_adv, x, 0.01)
    assert res.success.tolist() == [False, False]  # x - 0.2 is misclassified, but its projection is not


def test_clean_misclassified_count_as_success_with_x_adv_equal_x():
    model, x, y = predicted_case("conv", 1, 6, 0.05)
    y[:3] = (y[:3] + 1) % 10
    for attack in quick_attacks(2).values():
        res = attack(model, x, y, 0.05, gen(0))
        assert res.success[:3].all()
        assert torch.equal(res.x_adv[:3], x[:3])


class ModeSpy(Attack):
    def perturb(self, model, x, y, eps, generator, meter):
        self.seen = (model.training, torch.is_grad_enabled(), x.device)
        return x


def test_eval_mode_during_attack_and_mode_restored():
    model, x, y = predicted_case("conv_bn", 2, 4, 0.05)
    for training in (True, False):
        model.train(training)
        spy = ModeSpy()
        with torch.no_grad():  # the caller's no_grad must not disable the attack's gradients
            spy(model, x, y, 0.05)
        assert spy.seen[:2] == (False, True)
        assert model.training is training
        res = PGD(steps=2)(model, x, y, 0.05, gen(0))
        assert model.training is training and res.x_adv.device == x.device
    assert all(p.grad is None for p in model.parameters())


def test_pgd_perturb_keeps_mode_and_touches_no_parameter_gradient():
    model, x, y = predicted_case("conv_bn", 3, 4, 0.1)
    model.train()
    stats = [b.clone() for b in model.buffers()]
    out = pgd_perturb(model, x, y, 0.1, steps=3, step_size=0.03, random_start=True, generator=gen(1))
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    assert not out.requires_grad
    assert_in_ball(out, x, 0.1)
    assert any(not torch.equal(a, b) for a, b in zip(stats, model.buffers()))  # train-mode BN ran (documented)
    again = pgd_perturb(model.eval(), x, y, 0.1, steps=3, step_size=0.03, random_start=True, generator=gen(1))
    assert torch.equal(again, pgd_perturb(model, x, y, 0.1, 3, 0.03, True, gen(1)))


def test_cw_margin_loss():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0]])
    y = torch.tensor([0, 0])
    assert cw_margin_loss(logits, y).tolist() == [-1.0, 0.0]        # -(3-2); max(0-5, 0) = 0
    assert cw_margin_loss(logits, y, kappa=10.0).tolist() == [-1.0, 5.0]


# ----------------------------------------------------------------------------------------------------------------
# Cost counting
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [PGD, CW])
@pytest.mark.parametrize("steps,restarts", [(0, 1), (3, 1), (5, 3)])
def test_pgd_pass_count(cls, steps, restarts):
    model, x, y = predicted_case("fc", 4, 4, 0.0)  # eps = 0: nothing breaks, every restart runs on every sample
    res = cls(steps=steps, step_size=0.01, restarts=restarts)(model, x, y, 0.0, gen(0))
    assert not res.success.any()
    assert res.passes == restarts * (2 * steps + 1) + 2  # + clean forward + re-check forward


def test_pass_count_is_pro_rata_over_attacked_samples():
    model, x, y = predicted_case("fc", 4, 4, 0.0)
    y[:2] = (y[:2] + 1) % 10  # two samples misclassified: not attacked
    res = PGD(steps=3, restarts=2)(model, x, y, 0.0, gen(0))
    assert res.passes == 1 + math.ceil(2 * 7 * 2 / 4) + 1
    meter = CostMeter(4)
    meter.add(3, 1)
    assert meter.passes == 1


def test_interval_pass_count():
    model, x, y = predicted_case("fc", 5, 3, 0.0)
    r = bound_passes(x)
    assert r == 2 * (36 + 2)
    # eps = 0: the ladder is [0]; the relaxation proves the (point) box safe, so every sample is stuck after one
    # propagation (no backward pass: the interval gradient comes with it) and leaves the interval phase for good
    res = IntervalAttack(iterations=2, pgd_steps=3)(model, x, y, 0.0, gen(0))
    assert res.passes == 1 + r + (2 * 3 + 1) + 1
    # PGD between the interval steps (the authors' schedule): a PGD run before each of the 2 steps and one after;
    # a stuck sample is tried again after each PGD run, since PGD moved it
    res = IntervalAttack(iterations=2, pgd_steps=3, pgd_between=True)(model, x, y, 0.0, gen(0))
    assert res.passes == 1 + 3 * (2 * 3 + 1) + 2 * r + 1


# ----------------------------------------------------------------------------------------------------------------
# PGD behaviour
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fc", "conv", "residual_down_bn"])
def test_every_attack_stays_in_ball(kind):
    for seed in range(2):
        case = make_case(kind, seed, batch=5)
        for eps in (0.0, case.eps, 0.4):
            for attack in quick_attacks(4).values():
                res = attack(case.model, case.x, case.y, eps, gen(seed))
                assert_in_ball(res.x_adv, case.x, eps)
                assert res.success.dtype == torch.bool and res.success.shape == (5,)
                assert torch.equal(res.success, recheck(case.model, res.x_adv, case.x, case.y, eps))


def test_eps_zero_succeeds_only_on_misclassified():
    case = make_case("conv", 7, batch=8)
    with torch.no_grad():
        wrong = case.model(case.x).argmax(1) != case.y
    assert 0 < int(wrong.sum()) < 8  # both kinds of sample present
    for attack in quick_attacks(5).values():
        res = attack(case.model, case.x, case.y, 0.0, gen(0))
        assert torch.equal(res.success, wrong)
        assert torch.equal(res.x_adv, case.x)


def test_pgd_reproducible_with_seed():
    model, x, y = predicted_case("conv", 8, 6, 0.1)
    a = PGD(steps=4, step_size=0.02, restarts=2)(model, x, y, 0.1, gen(5))
    b = PGD(steps=4, step_size=0.02, restarts=2)(model, x, y, 0.1, gen(5))
    c = PGD(steps=0, restarts=1)(model, x, y, 0.1, gen(6))
    d = PGD(steps=0, restarts=1)(model, x, y, 0.1, gen(5))
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert not torch.equal(c.x_adv, d.x_adv)  # the random start follows the generator


def test_pgd_finds_violations_that_exist():
    """Tiny FC nets with the exact minimum margin (MILP): a clear violation (exact min margin < -0.05) is found."""
    found = exists = 0
    for seed in range(4):
        model = make_tiny_fc(seed, widths=(8, 8), input_shape=(1, 2, 3))
        g = gen(100 + seed)
        x = torch.rand(4, 1, 2, 3, generator=g)
        with torch.no_grad():
            y = model(x).argmax(1)
        eps = 0.15
        worst = exact_margin_min(model, x, y, eps).scatter(1, y[:, None], float("inf")).amin(1)
        res = PGD(steps=100, step_size=0.01, restarts=10)(model, x, y, eps, g)
        clear = worst < -0.05
        exists += int(clear.sum())
        found += int((res.success & clear).sum())
        assert not (res.success & (worst > 0)).any()  # and never where none exists
    assert exists >= 5 and found == exists


# ----------------------------------------------------------------------------------------------------------------
# Soundness against the bound engine
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["fc", "conv", "residual_down_bn"])
def test_verified_samples_are_never_broken(kind):
    verified_total = broken_total = 0
    for seed in range(3):
        for eps in (0.01, 0.04):
            model, x, y = predicted_case(kind, seed, 6, eps)
            ver = torch.tensor(verify(model, x, y, eps, ["interval", "symbolic_linear", "backward"]).verified)
            verified_total += int(ver.sum())
            for name, attack in quick_attacks(10).items():
                res = attack(model, x, y, eps, gen(seed))
                broken = res.success & ver
                assert not broken.any(), f"{name} broke verified samples {broken.nonzero().flatten().tolist()} " \
                                         f"of {kind} seed {seed} eps {eps}: a soundness bug"
                broken_total += int(res.success.sum())
    assert verified_total > 0 and broken_total > 0  # the check is not vacuous


# ----------------------------------------------------------------------------------------------------------------
# Interval attack
# ----------------------------------------------------------------------------------------------------------------

def spy_bounds(monkeypatch) -> list[tuple[float, int]]:
    """Record ``(delta, n_samples)`` of every bound propagation the interval attack makes."""
    calls: list[tuple[float, int]] = []
    real = interval_mod.margin_equations

    def spy(model, x, y, delta):
        calls.append((delta, x.shape[0]))
        return real(model, x, y, delta)
    monkeypatch.setattr(interval_mod, "margin_equations", spy)
    return calls


def linear_net(weight: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    """``logits = weight @ flatten(x) + bias`` on ``[B, 1, 2, 3]`` inputs: the relaxation is exact."""
    lin = nn.Linear(6, 10)
    with torch.no_grad():
        lin.weight.copy_(weight)
        lin.bias.copy_(bias)
    return CertifiedNet(nn.Sequential(nn.Flatten(), lin), [0.0], [1.0], "synthetic").eval()


def two_rival_net() -> nn.Module:
    """Class 0 is predicted at x = 0.5; classes 1 and 2 are its rivals, with margins ``z_0 - z_1 = 0.05 + w1 . x'``
    and ``z_0 - z_2 = 0.30 + 3 w2 . x'`` (``x' = x - 0.5``), where w1 and w2 disagree in sign on three pixels;
    classes 3..9 are far behind.  Over a box of half-width δ: ``lb_1 = 0.05 - 6 δ``, ``lb_2 = 0.30 - 18 δ``."""
    w1 = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    w2 = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    weight = torch.zeros(10, 6)
    weight[1], weight[2] = -w1, -3 * w2       # z_0 = 0, so z_0 - z_j = -(weight_j . x + b_j)
    bias = torch.full((10,), -100.0)
    bias[0] = 0.0
    bias[1] = -0.05 + float(w1.sum()) * 0.5
    bias[2] = -0.30 + 3 * float(w2.sum()) * 0.5
    return linear_net(weight, bias)


def test_margin_equations_are_the_exact_margins_on_a_linear_net():
    model = two_rival_net()
    x = torch.full((1, 1, 2, 3), 0.5)
    y = torch.zeros(1, dtype=torch.long)
    lb, coef = interval_mod.margin_equations(model, x, y, 0.02)
    w = model.net[1].weight.detach()
    assert torch.allclose(coef[0].reshape(6, 10), (w[0] - w).T, atol=1e-6)   # d(z_0 - z_j)/dx
    exact = (model(x)[0, 0] - model(x)[0]) - 0.02 * (w[0] - w).abs().sum(1)
    assert torch.allclose(lb[0], exact, atol=1e-5)


def test_interval_step_follows_the_equation_of_the_worst_class_only():
    """Algorithm 1's direction: -sign of the input coefficients of the lower equation of the one margin the
    relaxation finds worst (class 1 here, lower bound below class 2's), not a mix over classes.  The previous
    implementation (gradient w.r.t. the box centre of the cross-entropy on all worst-case logits) followed class 2 on
    the pixels where the rivals disagree, because class 2's coefficients are 3x larger."""
    model = two_rival_net()
    x = torch.full((1, 1, 2, 3), 0.5)
    y = torch.zeros(1, dtype=torch.long)
    lb, _ = interval_mod.margin_equations(model, x, y, 0.005)
    assert 0 < float(lb[0, 1]) < float(lb[0, 2])   # the box of 0.005 is proven safe
    lb, _ = interval_mod.margin_equations(model, x, y, 0.01)
    assert float(lb[0, 1]) <= 0 < float(lb[0, 2])  # the box of 0.01 is not, through class 1 only
    attack = IntervalAttack(iterations=1, delta_init=0.005, growth=2.0, pgd_steps=0, step_size=0.04)
    res = attack(model, x, y, 0.3)
    step = (res.x_adv - x).flatten()
    assert torch.allclose(step, torch.full((6,), -0.04), atol=1e-6)  # -sign(w1) everywhere
    assert res.success.tolist() == [True]
    assert res.passes == 1 + 2 * bound_passes(x) + 1 + 1  # two boxes bounded, one early-stop forward


def test_interval_step_is_the_box_half_width_by_default():
    model = two_rival_net()
    x = torch.full((1, 1, 2, 3), 0.5)
    y = torch.zeros(1, dtype=torch.long)
    attack = IntervalAttack(iterations=1, pgd_steps=0)
    assert attack.deltas(0.3) == pytest.approx([0.01, 0.03, 0.09, 0.15])
    res = attack(model, x, y, 0.3)
    # the first box, 0.01, is not proven safe (lb_1 = 0.05 - 6 * 0.01 < 0): the step is 0.01
    assert torch.allclose((res.x_adv - x).flatten(), torch.full((6,), -0.01), atol=1e-6)


def test_interval_stuck_sample_does_not_move_and_is_not_bounded_again(monkeypatch):
    """A sample whose every box the relaxation proves safe stays where it is (the previous implementation stepped
    anyway, along the gradient of the largest box) and costs one scan of the ladder, not one per iteration."""
    model = two_rival_net()
    x = torch.full((1, 1, 2, 3), 0.5)
    y = torch.zeros(1, dtype=torch.long)
    eps = 0.01  # ladder [0.005]: lb_1 = 0.05 - 6 * 0.005 > 0
    calls = spy_bounds(monkeypatch)
    attack = IntervalAttack(iterations=5, delta_init=0.005, pgd_steps=0)
    assert attack.deltas(eps) == [0.005]
    res = attack(model, x, y, eps)
    assert torch.equal(res.x_adv, x) and res.success.tolist() == [False]
    assert calls == [(0.005, 1)]
    assert res.passes == 1 + bound_passes(x) + 1


def test_interval_deltas_never_exceed_the_cap_and_chunks(monkeypatch):
    calls = spy_bounds(monkeypatch)
    model, x, y = predicted_case("conv", 9, 5, 0.07)
    eps = 0.07
    attack = IntervalAttack(iterations=3, delta_init=0.005, growth=3.0, max_delta_frac=1.0, pgd_steps=0,
                            max_samples_per_chunk=2)
    assert attack.deltas(eps) == pytest.approx([0.005, 0.015, 0.045, 0.07])
    res = attack(model, x, y, eps, gen(0))
    assert calls and all(d <= eps for d, _ in calls)
    assert {d for d, _ in calls} <= set(attack.deltas(eps))
    assert all(n <= 2 for _, n in calls)
    assert_in_ball(res.x_adv, x, eps)
    assert IntervalAttack(delta_init=1.0).deltas(0.1) == [0.05]                        # capped at ε / 2
    assert IntervalAttack(delta_init=1.0, max_delta_frac=1.0).deltas(0.1) == [0.1]     # never above ε
    assert IntervalAttack(delta_init=1e-3, growth=2.0, max_delta_tries=3).deltas(0.3) == [1e-3, 2e-3, 4e-3]
    assert IntervalAttack(delta_init=1e-4).deltas(2 / 255) == pytest.approx([1e-4, 3e-4, 9e-4, 2.7e-3, 1 / 255])


def test_interval_box_scan_stops_at_the_smallest_unsafe_box(monkeypatch):
    """With a faked relaxation (sample i's boxes are unsafe from δ >= threshold_i on), each sample is bounded on the
    ladder's boxes from the smallest up to its first unsafe one, and steps by that box's δ; a sample never unsafe is
    bounded on the whole ladder once and does not move."""
    attack = IntervalAttack(delta_init=0.01, growth=2.0, max_delta_frac=1.0, max_delta_tries=10)
    ladder = attack.deltas(0.3)  # 0.01 .. 0.3, 6 values
    thresholds = torch.tensor([0.005, 0.01, 0.03, 0.05, 0.15, 0.2, 1.0])  # 1.0: never unsafe
    tried: dict[int, list[float]] = {i: [] for i in range(7)}

    def fake(model, x, y, delta):
        idx = x[:, 0, 0, 0].round().long()
        for i in idx.tolist():
            tried[i].append(delta)
        lb = torch.ones(x.shape[0], 10)
        lb[(delta >= thresholds[idx]), 3] = -1.0
        coef = torch.ones(x.shape[0], *x.shape[1:], 10)
        return lb, coef
    monkeypatch.setattr(interval_mod, "margin_equations", fake)
    x = torch.arange(7, dtype=torch.float32).view(7, 1, 1, 1)
    y = torch.zeros(7, dtype=torch.long)
    direction, step, found = attack.interval_step(None, x, y, 0.3, CostMeter(7))
    first = [next((k for k, d in enumerate(ladder) if d >= t), None) for t in thresholds.tolist()]
    assert found.tolist() == [k is not None for k in first]
    for i, k in enumerate(first):
        assert tried[i] == ladder[:(len(ladder) if k is None else k + 1)]
        assert float(step[i]) == pytest.approx(0.0 if k is None else ladder[k])
        assert float(direction[i].sum()) == (0.0 if k is None else -1.0)  # -sign of the (all-ones) equation


def test_interval_early_stop(monkeypatch):
    model, x, y = predicted_case("fc", 10, 8, 0.1)
    eps = 0.1
    kw = dict(delta_init=0.01, step_size=0.05, pgd_steps=0)
    one = IntervalAttack(iterations=1, **kw)(model, x, y, eps, gen(0))
    n_broken = int(one.success.sum())
    assert 0 < n_broken < 8, "the case should break some but not all samples in one iteration"
    _, _, found = IntervalAttack(**kw).interval_step(model.eval(), x, y, eps, CostMeter(8))
    sizes: list[int] = []
    attack = IntervalAttack(iterations=2, **kw)
    real = attack.interval_step

    def spy(model_, xs, ys, eps_, meter):
        sizes.append(xs.shape[0])
        return real(model_, xs, ys, eps_, meter)
    monkeypatch.setattr(attack, "interval_step", spy)
    two = attack(model, x, y, eps, gen(0))
    # iteration 2 runs only on the samples neither broken nor stuck in iteration 1
    assert sizes == [8, int((found & ~one.success).sum())]
    assert (two.success >= one.success).all()  # broken samples stay broken (their point is frozen)
    assert torch.equal(two.x_adv[one.success], one.x_adv[one.success])


# ----------------------------------------------------------------------------------------------------------------
# A small trained MNIST model: strength against torchattacks, and interval vs its own PGD tail
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_model():
    from pipeline.data import load_split
    torch.manual_seed(0)
    train = load_split("mnist", DATA_ROOT, "train")
    test = load_split("mnist", DATA_ROOT, "test")
    xs, ys = train.float_images(slice(0, 8000)), train.y[:8000]
    model = CertifiedNet(nn.Sequential(nn.Flatten(), nn.Linear(784, 48), nn.ReLU(), nn.Linear(48, 10)),
                         [0.0], [1.0], "mnist")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(3):
        for i in range(0, len(ys), 100):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xs[i:i + 100]), ys[i:i + 100]).backward()
            opt.step()
    model.eval()
    x, y = test.float_images(slice(0, 64)), test.y[:64]
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert acc >= 0.85, f"the quickly trained MNIST model is too weak ({acc:.2f})"
    return model, x, y


@needs_data
def test_pgd_breaks_trained_model(mnist_model):
    model, x, y = mnist_model
    res = PGD(steps=20, step_size=0.02)(model, x, y, 0.2, gen(0))
    assert float(res.success.float().mean()) >= 0.9
    assert res.passes <= 1 + (2 * 20 + 1) + 1  # less where clean mistakes were not attacked


@needs_data
def test_pgd_at_least_as_strong_as_torchattacks(mnist_model):
    torchattacks = pytest.importorskip("torchattacks", reason="torchattacks (test-only) is not installed: "
                                                              "pip install --no-deps torchattacks==3.5.1")
    model, x, y = mnist_model
    eps, steps, alpha = 0.06, 10, 0.01
    ours = theirs = 0
    for seed in range(3):
        ours += int(PGD(steps=steps, step_size=alpha)(model, x, y, eps, gen(seed)).success.sum())
        torch.manual_seed(seed)
        atk = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
        x_adv = atk(x, y)
        assert float((x_adv - x).abs().max()) <= eps + 1e-6
        theirs += int(recheck(model, x_adv, x, y, eps).sum())
    assert theirs > 0.1 * 3 * len(y) and theirs < 0.9 * 3 * len(y), "eps should make the comparison non-trivial"
    assert ours >= theirs - 2, f"our PGD broke {ours}, torchattacks.PGD {theirs} (3 seeds x {len(y)} images)"


@needs_data
def test_interval_attack_at_least_its_pgd_tail(mnist_model):
    """The interval iterations never cost their PGD tail anything here (measured at eps = 0.08: 23 of 32 both; the
    boxes of this naturally trained net are unsafe from 0.002 or 0.006 on, so five box-sized steps move little.  The
    pre-Algorithm-1 implementation, fixed steps of 0.01 along the verified-loss gradient, measured 27 vs 23)."""
    model, x, y = mnist_model
    x, y = x[:32], y[:32]
    eps, steps, alpha = 0.08, 10, 0.01
    tail = PGD(steps=steps, step_size=alpha, random_start=False)(model, x, y, eps)
    full = IntervalAttack(iterations=5, delta_init=0.002, pgd_steps=steps, pgd_step_size=alpha,
                          max_samples_per_chunk=32)(model, x, y, eps)
    assert torch.equal(full.success, recheck(model, full.x_adv, x, y, eps))
    assert 0 < int(tail.success.sum()) < len(y)
    assert int(full.success.sum()) >= int(tail.success.sum())
