"""Wong et al. 2018 and DiffAI on the bound engine: the dual bound against an exact LP with the same relaxation and
intermediate bounds (scipy linprog) and against the exact MILP; the random-projection estimate; DiffAI's hybrid
zonotope transformers; one training step of each method on MNIST_Small and residual nets.

The registered ``hybrid_zonotope`` domain also runs in tests/test_bounds_soundness.py and tests/test_bounds_milp.py
(parametrized over every registered domain); the unregistered variants are checked here.
"""
from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from pipeline.bounds import (DOMAINS, HYBRID_RELUS, HybridZonotopeDomain, ProjectionDomain, WongDualDomain,
                             bound_margins, cauchy_rows, fold_spec, median_l1, propagate, relax_hsmooth,
                             relax_hswitch, relax_parallel, to_ops, wong_domain)
from pipeline.models import build_model
from pipeline.models.zoo import CertifiedNet
from pipeline.train import get_method
from pipeline.train.diffai import softplus_max_loss
from tests.bound_helpers import (_fc_layers, check_sound, empirical_extremes, exact_margin_min, input_box_ref,
                                 make_case, make_net, make_tiny_fc, one_thread_per_module)

_one_thread = one_thread_per_module  # autouse fixture shared from bound_helpers

DIFFAI = {"domain": "hybrid_zonotope", "relu": "hsmooth", "robust_loss": "softplus_max", "natural_weight": 1.0,
          "robust_weight": 1.0}


# --------------------------------------------------------------------------------------------------------------
# Registration and soundness of the unregistered variants
# --------------------------------------------------------------------------------------------------------------

def test_hybrid_zonotope_is_registered_for_the_shared_suites():
    assert DOMAINS["hybrid_zonotope"] is HybridZonotopeDomain is HYBRID_RELUS["hsmooth"]
    assert WongDualDomain not in DOMAINS.values()  # pure Wong can be looser than IBP: not in the IBP-order suite


@functools.lru_cache(maxsize=None)
def _case(kind: str, seed: int):
    c = make_case(kind, 700 + seed, eps=[0.05, 0.12][seed])
    return c, empirical_extremes(c.model, c.x, c.y, c.eps, n_uniform=600, n_corners=200, steps=20, seed=seed)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("kind", ["fc_bn1d", "conv", "residual", "residual_down_bn", "fc_tail"])
def test_unregistered_variants_are_sound(kind, seed):
    c, extremes = _case(kind, seed)
    for domain in (HYBRID_RELUS["hswitch"], HYBRID_RELUS["deepz"], WongDualDomain):
        check_sound(c.model, c.x, c.y, c.eps, domain, extremes=extremes)


def test_sound_on_mnist_small_with_sampled_points():
    """The zoo soundness test bounds a fixed domain list; the new bounds on a real zoo model here."""
    torch.manual_seed(0)
    model = build_model("MNIST_Small", [0.1307], [0.3081]).eval()
    gen = torch.Generator().manual_seed(1)
    x, y, eps = torch.rand(1, 1, 28, 28, generator=gen), torch.tensor([3]), 0.1
    lo, hi = input_box_ref(x, eps, torch.float32)
    pts = lo + (hi - lo) * torch.rand(32, 1, 28, 28, generator=gen)
    pts[16:] = torch.where(torch.rand(16, 1, 28, 28, generator=gen) < 0.5, lo, hi)
    with torch.no_grad():
        z = copy.deepcopy(model).double()(pts.double())
        m = z[:, 3:4] - z
        for domain in (HybridZonotopeDomain, HYBRID_RELUS["deepz"], WongDualDomain):
            lb, ub = (t[0].double() for t in bound_margins(model, x, y, eps, domain, torch.float32))
            tol = 1e-5 * torch.maximum(lb.abs(), ub.abs()).clamp_min(1.0)
            assert (lb <= m.min(0).values + tol).all() and (ub >= m.max(0).values - tol).all(), domain


def test_diffai_relaxations_are_parallel_and_valid():
    gen = torch.Generator().manual_seed(0)
    l = torch.randn(2000, generator=gen, dtype=torch.float64) * 2
    u = l + torch.rand(2000, generator=gen, dtype=torch.float64) * 4
    t = torch.rand(64, 1, generator=gen, dtype=torch.float64)
    x = l + (u - l) * torch.cat([t, torch.zeros(1, 1), torch.ones(1, 1)])  # samples and both ends
    for relax in (relax_hsmooth, relax_hswitch):
        r = relax(l, u)
        assert torch.equal(r.lower_slope, r.upper_slope)
        assert (r.lower_slope * x + r.lower_bias <= x.clamp_min(0) + 1e-12).all()
        assert (r.upper_slope * x + r.upper_bias >= x.clamp_min(0) - 1e-12).all()
        stable = (l >= 0) | (u <= 0)
        assert torch.equal(r.lower_bias[stable], r.upper_bias[stable])  # stable neurons are exact
    # hSmooth: DeepZ's slope u/(u-l), twice DeepZ's band
    hs, dz = relax_hsmooth(l, u), relax_parallel(l, u)
    torch.testing.assert_close(hs.lower_slope, dz.lower_slope)
    torch.testing.assert_close(hs.upper_bias - hs.lower_bias, 2 * (dz.upper_bias - dz.lower_bias))


# --------------------------------------------------------------------------------------------------------------
# Wong's dual bound == LP with the same fixed relaxation and intermediate bounds, <= the exact MILP minimum
# --------------------------------------------------------------------------------------------------------------

def _tiny_net(widths: tuple[int, ...], seed: int) -> CertifiedNet:
    gen = torch.Generator().manual_seed(80_000 + seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(b, a, generator=gen) * 1.5 / math.sqrt(a))
            lin.bias.copy_(torch.randn(b, generator=gen) * 0.3)
        layers += [lin] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    return CertifiedNet(nn.Sequential(*layers), [0.4], [0.3], "synthetic").eval()


def _recorded_bounds(model: nn.Module, x: torch.Tensor, eps: float, spec: torch.Tensor):
    """Wong's raw lower bound on ``spec @ logits`` and the pre-activation bounds it relaxed each ReLU with."""
    seen = []

    def recording(l, u):
        seen.append((l[0].numpy().copy(), u[0].numpy().copy()))
        return relax_parallel(l, u)

    rec = type("RecordingWong", (WongDualDomain,), {"relax": staticmethod(recording)})
    ops = fold_spec(to_ops(model, torch.float64), spec.double())
    lo, hi = input_box_ref(x, eps)
    with torch.no_grad():
        lb, _ = propagate(ops, rec.from_box(lo, hi)).concretize()
    return lb[0].numpy(), seen


def _lp_min(layers, bounds, lo, hi, objective, upto: int):
    """min of ``objective`` (a function of the variables' index map) over the LP relaxation of layers ``< upto``:
    ``z = W a + b``; unstable ReLUs ``d z <= a <= d (z - l)`` (d = u/(u-l)), stable ones exact; ``lo <= x <= hi``."""
    d_in = lo.size
    sizes = [w.shape[0] for w, _ in layers[:upto]]
    n = d_in + 2 * sum(sizes)
    a_eq, b_eq, a_ub, b_ub = [], [], [], []
    prev, off, z_idx = np.arange(d_in), d_in, []
    for k, (w, b) in enumerate(layers[:upto]):
        z, a = off + np.arange(w.shape[0]), off + w.shape[0] + np.arange(w.shape[0])
        off += 2 * w.shape[0]
        z_idx.append(z)
        for i in range(w.shape[0]):  # z_i = W_i . prev + b_i
            row = np.zeros(n)
            row[prev], row[z[i]] = -w[i], 1.0
            a_eq.append(row), b_eq.append(b[i])
        if k == len(bounds):  # the last layer asked for: no ReLU after it
            break
        l, u = bounds[k]
        for i in range(w.shape[0]):
            row = np.zeros(n)
            if u[i] <= 0 or l[i] >= 0:  # exact: a = 0 or a = z
                row[a[i]], row[z[i]] = 1.0, (-1.0 if l[i] >= 0 else 0.0)
                a_eq.append(row), b_eq.append(0.0)
                continue
            d = u[i] / (u[i] - l[i])
            row[z[i]], row[a[i]] = d, -1.0  # d z - a <= 0
            a_ub.append(row), b_ub.append(0.0)
            row = np.zeros(n)
            row[a[i]], row[z[i]] = 1.0, -d  # a - d z <= -d l
            a_ub.append(row), b_ub.append(-d * l[i])
        prev = a
    c, const = objective(prev, z_idx, n)
    res = linprog(c, A_ub=np.array(a_ub) if a_ub else None, b_ub=b_ub or None, A_eq=np.array(a_eq),
                  b_eq=b_eq, bounds=[(lo[i], hi[i]) for i in range(d_in)] + [(None, None)] * (n - d_in),
                  method="highs")
    assert res.status == 0, res.message
    return res.fun + const


def _check_against_lp(model, x, eps, spec):
    lb, seen = _recorded_bounds(model, x, eps, spec)
    layers = _fc_layers(model)  # float64, normalisation folded, independent of the bound engine
    lo, hi = (t.flatten().numpy() for t in input_box_ref(x[0], eps))
    assert len(seen) == len(layers) - 1
    for k, (l, u) in enumerate(seen):  # intermediate bounds: the LP over the layers before
        for i in range(l.size):
            def neuron(sign):
                def obj(prev, z_idx, n):
                    c = np.zeros(n)
                    c[z_idx[k][i]] = sign
                    return c, 0.0
                return obj
            assert l[i] == pytest.approx(_lp_min(layers, seen[:k], lo, hi, neuron(1.0), k + 1), abs=1e-5)
            assert u[i] == pytest.approx(-_lp_min(layers, seen[:k], lo, hi, neuron(-1.0), k + 1), abs=1e-5)
    w_out, b_out = layers[-1]
    for j, row in enumerate(spec[0].double().numpy()):
        def margin(prev, z_idx, n):
            c = np.zeros(n)
            c[prev] = row @ w_out
            return c, float(row @ b_out)
        assert lb[j] == pytest.approx(_lp_min(layers, seen, lo, hi, margin, len(layers) - 1), abs=1e-5)
    return sum(int(((l < 0) & (u > 0)).sum()) for l, u in seen)


@pytest.mark.parametrize("widths", [(2, 3, 3, 2), (4, 5, 5, 3)], ids=["2-3-3-2", "4-5-5-3"])
def test_wong_bound_equals_lp_with_same_relaxation(widths):
    unstable = 0
    for seed in range(6):
        model = _tiny_net(widths, seed)
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(1, 1, 1, widths[0], generator=gen)
        spec = torch.randn(1, 4, widths[-1], generator=gen)
        unstable += _check_against_lp(model, x, [0.1, 0.25][seed % 2], spec)
    assert unstable >= 6, "too few unstable ReLUs: the LP comparison would be trivial"


@pytest.mark.parametrize("seed", range(4))
def test_wong_bound_is_the_lp_and_below_the_milp_on_10_class_nets(seed):
    net = make_tiny_fc(90 + seed, widths=(8, 6))
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, 2, 3, generator=gen)
    y = torch.randint(0, 10, (1,), generator=gen)
    eps = [0.05, 0.1][seed % 2]
    spec = torch.eye(10)[y][:, None] - torch.eye(10)[None]
    _check_against_lp(net, x, eps, spec)
    with torch.no_grad():
        lb, ub = bound_margins(net, x, y, eps, WongDualDomain, torch.float64)
    exact = exact_margin_min(net, x, y, eps)
    assert (lb <= exact + 1e-6).all()
    assert (lb < exact - 1e-3).any(), "the relaxation is never loose here: test nets too easy"


# --------------------------------------------------------------------------------------------------------------
# Random projections (training estimate, not a bound)
# --------------------------------------------------------------------------------------------------------------

def test_median_cauchy_estimate_of_l1_norm_converges():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 50, generator=gen, dtype=torch.float64)
    radius = torch.rand(1, 50, generator=gen, dtype=torch.float64)
    exact = radius @ w.abs().t()
    errors = []
    for k in (10, 100, 10_000):
        est = median_l1(cauchy_rows(radius, k, torch.Generator().manual_seed(k)) @ w.t())
        errors.append(((est - exact).abs() / exact).mean().item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.03, errors


@functools.lru_cache(maxsize=None)
def _mnist_fc():
    torch.manual_seed(1)
    net = CertifiedNet(nn.Sequential(nn.Flatten(), nn.Linear(784, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(),
                                     nn.Linear(40, 10)), [0.1307], [0.3081], "mnist").eval()
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with torch.no_grad():
        exact = bound_margins(net, x, y, 0.02, wong_domain(), torch.float64)[0]
    return net, x, y, exact


def test_projected_dual_bound_converges_to_the_exact_one():
    net, x, y, exact = _mnist_fc()
    keep = torch.arange(10)[None] != y[:, None]
    mean_err = []
    for k in (10, 100, 400):
        errs = []
        for seed in range(5):
            with torch.no_grad():
                lb = bound_margins(net, x, y, 0.02, wong_domain(k, torch.Generator().manual_seed(seed)),
                                   torch.float64)[0]
            errs.append(((lb - exact)[keep].abs() / exact[keep].abs()).mean().item())
        mean_err.append(sum(errs) / len(errs))
    assert mean_err[0] > mean_err[1] > mean_err[2] and mean_err[2] < 0.12, mean_err


def test_projected_estimate_is_not_a_bound_but_reproducible():
    net, x, y, exact = _mnist_fc()
    with torch.no_grad():
        draws = [bound_margins(net, x, y, 0.02, wong_domain(10, torch.Generator().manual_seed(s)),
                               torch.float64)[0] for s in range(4)]
        again = bound_margins(net, x, y, 0.02, wong_domain(10, torch.Generator().manual_seed(0)), torch.float64)[0]
    assert torch.equal(draws[0], again) and not torch.equal(draws[0], draws[1])
    assert any((d > exact + 1e-6).any() for d in draws), "the estimate never exceeds the exact bound"


def test_projection_domain_keeps_small_sources_exact():
    lo, hi = torch.zeros(2, 1, 28, 28), torch.full((2, 1, 28, 28), 0.1)
    lo[:, :, :, 5:] = hi[:, :, :, 5:] = 0.5  # only 5 x 28 = 140 pixels perturbed
    many = wong_domain(200).companion.from_box(lo, hi)
    few = wong_domain(10).companion.from_box(lo, hi)
    assert [s.exact for s in many.sources] == [True] and many.rows.shape[1] == 140
    assert [s.exact for s in few.sources] == [False] and few.rows.shape[1] == 10
    exact = ProjectionDomain.from_box(lo, hi)
    torch.testing.assert_close(many.concretize()[0], exact.concretize()[0])


@pytest.mark.parametrize("kind", ["residual", "residual_down_bn"])
def test_projected_dual_runs_on_residual_nets(kind):
    c = make_case(kind, 3, eps=0.1)
    lb, ub = bound_margins(c.model, c.x, c.y, c.eps, wong_domain(3, torch.Generator().manual_seed(0)))
    assert torch.isfinite(lb).all() and torch.isfinite(ub).all() and lb.requires_grad


# --------------------------------------------------------------------------------------------------------------
# Training: one step of each method
# --------------------------------------------------------------------------------------------------------------

def _step(method, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> dict:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    loss, stats = method.loss(model, x, y, eps)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    opt.zero_grad()
    loss.backward()
    for (name, p) in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    return stats


@pytest.mark.parametrize("method,params", [("wong", {"projections": 10}), ("diffai", DIFFAI)])
def test_one_step_on_mnist_small(method, params):
    torch.manual_seed(0)
    model = build_model("MNIST_Small", [0.1307], [0.3081])
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    stats = _step(get_method(method)(params, "mnist", 0), model, x, y, 0.1)
    assert 0.0 <= stats["acc"] <= 1.0 and 0.0 <= stats["robust_err"] <= 1.0


@pytest.mark.parametrize("method,params", [
    ("wong", {"projections": 3}), ("wong", {"projections": None}), ("diffai", DIFFAI),
    ("diffai", {**DIFFAI, "relu": "deepz", "robust_loss": "ce"}), ("diffai", {**DIFFAI, "relu": "hswitch"})])
def test_one_step_on_a_residual_net(method, params):
    model = make_net("residual", 4)
    gen = torch.Generator().manual_seed(4)
    x, y = torch.rand(3, 1, 5, 5, generator=gen), torch.randint(0, 10, (3,), generator=gen)
    _step(get_method(method)(params, "mnist", 0), model, x, y, 0.1)


def test_wong_draws_resume_from_the_method_state():
    net, x, y, _ = _mnist_fc()
    method = get_method("wong")({"projections": 10}, "mnist", 5)
    state = method.state_dict()
    first, _ = method.loss(net, x, y, 0.02)
    second, _ = method.loss(net, x, y, 0.02)
    method.load_state_dict(state)
    again, _ = method.loss(net, x, y, 0.02)
    assert again.item() == first.item() != second.item()


def test_diffai_loss_is_the_documented_mix():
    torch.manual_seed(0)
    model = make_net("fc", 2)
    x, y = torch.rand(5, 1, 6, 6), torch.randint(0, 10, (5,))
    method = get_method("diffai")({**DIFFAI, "natural_weight": 3.0}, "mnist", 0)
    loss, stats = method.loss(model, x, y, 0.05)
    lb, _ = bound_margins(model, x, y, 0.05, HybridZonotopeDomain)
    natural = nn.functional.cross_entropy(model(x), y)
    torch.testing.assert_close(loss, (3 * natural + softplus_max_loss(lb, y)) / 4)
    # DiffAI's abstract loss: softplus of the largest violation, the label's own entry counting as -1
    lb = torch.tensor([[0.0, 2.0, 3.0], [0.0, -1.5, 0.5]])
    want = (nn.functional.softplus(torch.tensor(-1.0)) + nn.functional.softplus(torch.tensor(1.5))) / 2
    torch.testing.assert_close(softplus_max_loss(lb, torch.tensor([0, 0])), want)


@pytest.mark.parametrize("method,params,match", [
    ("wong", {"projections": 0}, "projections"), ("wong", {"projections": 2.5}, "projections"),
    ("diffai", {**DIFFAI, "relu": "zSmooth"}, "relu"), ("diffai", {**DIFFAI, "robust_loss": "hinge"}, "robust_loss"),
    ("diffai", {**DIFFAI, "domain": "interval"}, "relu"), ("diffai", {**DIFFAI, "robust_weight": -1}, "weight")])
def test_bad_parameters_are_rejected(method, params, match):
    with pytest.raises(ValueError, match=match):
        get_method(method)(params, "mnist", 0)


def test_diffai_takes_any_registered_domain():
    method = get_method("diffai")({"domain": "interval", "robust_loss": "ce"}, "mnist", 0)
    assert method.domain is DOMAINS["interval"]


def test_mixtrain_takes_the_hybrid_zonotope_as_its_sound_approximation():
    params = {"domain": "hybrid_zonotope", "k": 2, "alpha": 0.5, "alpha_rule": {"kind": "constant", "start": 0.5}}
    model = make_net("residual", 5)
    gen = torch.Generator().manual_seed(5)
    x, y = torch.rand(3, 1, 5, 5, generator=gen), torch.randint(0, 10, (3,), generator=gen)
    stats = _step(get_method("mixtrain")(params, "mnist", 0), model, x, y, 0.1)
    assert math.isfinite(stats["verified_loss"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_projected_draws_on_cuda_are_reproducible_from_a_cpu_generator():
    net, x, y, exact = _mnist_fc()
    net = copy.deepcopy(net).cuda()  # the cached CPU net stays where it is
    runs = [bound_margins(net, x.cuda(), y.cuda(), 0.02, wong_domain(10, torch.Generator().manual_seed(0)),
                          torch.float64)[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1]) and torch.isfinite(runs[0]).all()
    assert (runs[0].cpu() - exact).abs().max() < exact.abs().max()
