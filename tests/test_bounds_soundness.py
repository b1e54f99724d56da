"""Soundness of every bound domain on random small nets (sampling, box corners, PGD), ordering against IBP, the
ordering exception without the interval intersection, gradients, unsupported layers, and the model zoo."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from pipeline.bounds import DOMAINS, SymbolicLinearDomain, bound_margins
from pipeline.errors import UnsupportedLayerError
from pipeline.models import MODELS, build_model
from pipeline.models.zoo import CertifiedNet, Residual
from tests.bound_helpers import (NET_KINDS, TOL32, TOL64, all_domains, check_sound, check_sound_all,
                                 empirical_extremes, input_box_ref, make_case, make_edge_net, margins,
                                 one_thread_per_module)

DOMAIN_NAMES = all_domains()
KINDS = sorted(NET_KINDS)
SEEDS = range(16)


_one_thread = one_thread_per_module  # autouse fixture shared from bound_helpers


def test_all_expected_domains_registered():
    assert {"interval", "symbolic_interval", "symbolic_linear", "backward", "backward_ibp"} <= set(DOMAINS)


@functools.lru_cache(maxsize=None)
def _case(kind: str, seed: int):
    return make_case(kind, seed, eps=[0.05, 0.1, 0.18][seed % 3])


@functools.lru_cache(maxsize=None)
def _extremes(kind: str, seed: int):
    c = _case(kind, seed)
    return empirical_extremes(c.model, c.x, c.y, c.eps, seed=seed)


@functools.lru_cache(maxsize=None)
def _bounds(kind: str, seed: int, domain, dtype: torch.dtype):
    c = _case(kind, seed)
    with torch.no_grad():
        lb, ub = bound_margins(c.model, c.x, c.y, c.eps, domain, dtype)
    return lb.double(), ub.double()


# --------------------------------------------------------------------------------------------------------------
# Soundness
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_sound_on_random_nets(domain, kind, seed):
    c = _case(kind, seed)
    check_sound(c.model, c.x, c.y, c.eps, domain, extremes=_extremes(kind, seed))


def test_check_sound_all_takes_a_domain_list():
    c = _case("conv", 1)
    out = check_sound_all(c.model, c.x, c.y, c.eps, domains=["interval", SymbolicLinearNoIntersect],
                          extremes=_extremes("conv", 1))
    assert set(out) == {"interval", SymbolicLinearNoIntersect}


@pytest.mark.parametrize("kind", KINDS)
def test_random_nets_have_many_unstable_relus(kind):
    """The test nets are only meaningful if ReLUs actually cross zero inside the boxes."""
    unstable = total = 0
    for seed in list(SEEDS)[:6]:
        c = _case(kind, seed)
        acts: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, i, _o: acts.append(i[0].detach()))
                 for m in c.model.modules() if isinstance(m, nn.ReLU)]
        lo, hi = input_box_ref(c.x, c.eps, torch.float32)
        gen = torch.Generator().manual_seed(seed)
        pts = lo + (hi - lo) * torch.rand(400, *c.x.shape, generator=gen)
        with torch.no_grad():
            c.model(pts.flatten(0, 1))
        for h in hooks:
            h.remove()
        for a in acts:
            a = a.view(400, c.x.shape[0], -1)
            unstable += ((a > 0).any(0) & (a < 0).any(0)).sum().item()
            total += a[0].numel()
    assert unstable / total > 0.1, f"{kind}: only {unstable}/{total} ReLUs cross zero"


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_batch_bounds_equal_per_sample_bounds(domain):
    """Samples in a batch must not leak into each other's bounds."""
    for kind in KINDS:
        c = make_case(kind, 99, batch=3, eps=0.1)
        with torch.no_grad():
            lb, ub = bound_margins(c.model, c.x, c.y, c.eps, domain, torch.float64)
            for i in range(3):
                lbi, ubi = bound_margins(c.model, c.x[i:i + 1], c.y[i:i + 1], c.eps, domain, torch.float64)
                torch.testing.assert_close(lb[i:i + 1], lbi, atol=1e-10, rtol=1e-10)
                torch.testing.assert_close(ub[i:i + 1], ubi, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_zero_eps_bounds_are_the_logit_margins(domain):
    """A degenerate box is a point: every domain must return the exact margins."""
    for kind in KINDS:
        c = _case(kind, 0)
        with torch.no_grad():
            lb, ub = bound_margins(c.model, c.x, c.y, 0.0, domain, torch.float64)
            m = margins(copy.deepcopy(c.model).double(), c.x.double(), c.y)
        torch.testing.assert_close(lb, m, atol=1e-9, rtol=0)
        torch.testing.assert_close(ub, m, atol=1e-9, rtol=0)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("edge", ["upper", "lower"])
@pytest.mark.parametrize("delta", [2.0 ** -7, 2.0 ** -14, 2.0 ** -20, 0.0])
@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_sound_on_barely_unstable_relu(domain, delta, edge, sign):
    """One ReLU whose pre-activation range crosses 0 by only ``delta`` (or touches it): rounding it to stable, or a
    relaxation off by ``delta``, is caught here although random nets' loose bounds would hide it."""
    x = torch.tensor([[[[0.4375, 0.8, 0.1]]]])  # box of x0: [0.25, 0.625], exact in float32
    y = torch.tensor([6])
    eps = 0.1875
    net, breaks = make_edge_net(x, eps, 6, edge, delta, sign)
    pts = x.double().repeat(3, 1, 1, 1)
    pts[:, 0, 0, 0] = torch.tensor(breaks, dtype=torch.float64)
    with torch.no_grad():
        m = margins(copy.deepcopy(net).double(), pts, y.expand(3))
        emin, emax = m.min(0).values, m.max(0).values
        assert (emax - emin)[6] == 0 and (emax - emin).max() == pytest.approx(delta, abs=1e-12)
        lb, ub = bound_margins(net, x, y, eps, domain, torch.float64)
    assert (lb[0] <= emin + 1e-12).all(), f"{domain}: lb {lb[0].tolist()} above the exact minimum {emin.tolist()}"
    assert (ub[0] >= emax - 1e-12).all(), f"{domain}: ub {ub[0].tolist()} below the exact maximum {emax.tolist()}"


# --------------------------------------------------------------------------------------------------------------
# Ordering against IBP
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("domain", [d for d in DOMAIN_NAMES if d != "interval"])
def test_never_looser_than_interval(domain, kind, seed):
    for dtype, tol in ((torch.float64, TOL64), (torch.float32, TOL32)):
        lb, ub = _bounds(kind, seed, domain, dtype)
        lbi, ubi = _bounds(kind, seed, "interval", dtype)
        scale = torch.maximum(lbi.abs(), ubi.abs()).clamp_min(1.0)
        assert (lb >= lbi - tol * scale).all(), f"{domain} {dtype}: lb below IBP by {(lbi - lb).max():.3e}"
        assert (ub <= ubi + tol * scale).all(), f"{domain} {dtype}: ub above IBP by {(ub - ubi).max():.3e}"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_backward_never_looser_than_its_symbolic_companion(kind, seed):
    """``backward`` runs symbolic_linear as its companion and intersects with it."""
    lb, ub = _bounds(kind, seed, "backward", torch.float64)
    lbs, ubs = _bounds(kind, seed, "symbolic_linear", torch.float64)
    scale = torch.maximum(lbs.abs(), ubs.abs()).clamp_min(1.0)
    assert (lb >= lbs - TOL64 * scale).all() and (ub <= ubs + TOL64 * scale).all()


class SymbolicLinearNoIntersect(SymbolicLinearDomain):
    """The paper's symbolic linear relaxation alone (not registered)."""
    intersect_interval = False


def test_unregistered_variant_stays_unregistered():
    assert SymbolicLinearNoIntersect not in DOMAINS.values()


def test_pure_symbolic_linear_can_be_looser_than_interval():
    """Without the interval intersection the theory's exception shows up: some margin bound is looser than IBP."""
    found = []
    for kind in KINDS:
        for seed in SEEDS:
            c = _case(kind, seed)
            with torch.no_grad():
                lb, ub = bound_margins(c.model, c.x, c.y, c.eps, SymbolicLinearNoIntersect, torch.float64)
            lbi, ubi = _bounds(kind, seed, "interval", torch.float64)
            gap = torch.maximum(lbi - lb, ub - ubi).max().item()
            if gap > 1e-6:
                found.append((kind, seed, gap))
    assert found, "no random case where pure symbolic linear bounds are looser than IBP"
    # and the registered domain (with the intersection) is never looser on those very cases
    for kind, seed, _ in found:
        lb, ub = _bounds(kind, seed, "symbolic_linear", torch.float64)
        lbi, ubi = _bounds(kind, seed, "interval", torch.float64)
        assert (lb >= lbi - 1e-9).all() and (ub <= ubi + 1e-9).all()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", KINDS)
def test_pure_symbolic_linear_is_sound(kind, seed):
    c = _case(kind, seed)
    check_sound(c.model, c.x, c.y, c.eps, SymbolicLinearNoIntersect, extremes=_extremes(kind, seed))


# --------------------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_gradients_reach_every_parameter(domain, kind):
    c = make_case(kind, 3, eps=0.1)
    c.model.zero_grad(set_to_none=True)
    lb, ub = bound_margins(c.model, c.x, c.y, c.eps, domain, torch.float32)
    assert lb.requires_grad
    (lb.sum() - 0.5 * ub.sum()).backward()
    for name, p in c.model.named_parameters():
        assert p.grad is not None, f"{domain}: no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"{domain}: non-finite gradient for {name}"
        assert p.grad.abs().sum() > 0, f"{domain}: zero gradient for {name}"


@pytest.mark.parametrize("kind", ["fc_bn1d", "conv_bn", "residual"])
@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_gradient_matches_finite_differences(domain, kind):
    """``lb`` is piecewise smooth in the parameters; away from kinks autograd must match central differences along a
    random direction in parameter space."""
    c = make_case(kind, 5, batch=1, eps=0.1)
    model = copy.deepcopy(c.model).double()
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(0)
    direction = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    base = [p.detach().clone() for p in params]

    def f(t: float) -> float:
        with torch.no_grad():
            for p, b0, v in zip(params, base, direction):
                p.copy_(b0 + t * v)
            return bound_margins(model, c.x, c.y, c.eps, domain, torch.float64)[0].sum().item()

    f(0.0)
    model.zero_grad()
    bound_margins(model, c.x, c.y, c.eps, domain, torch.float64)[0].sum().backward()
    analytic = sum((p.grad * v).sum().item() for p, v in zip(params, direction))
    h = 1e-6
    fd = (f(h) - f(-h)) / (2 * h)
    assert abs(fd - analytic) <= 1e-5 * max(1.0, abs(fd)), (fd, analytic)


# --------------------------------------------------------------------------------------------------------------
# Unsupported layers
# --------------------------------------------------------------------------------------------------------------

def _bad_nets():
    def wrap(*layers, side=4):
        return CertifiedNet(nn.Sequential(*layers), [0.5], [0.5], "synthetic").eval(), side

    train_bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 10))
    yield "Tanh", wrap(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 10))
    yield "MaxPool2d", wrap(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(8, 10))
    yield "AvgPool2d", wrap(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4, 10))
    yield "Sigmoid", wrap(nn.Flatten(), nn.Linear(16, 10), nn.Sigmoid())
    yield "Tanh", wrap(nn.Conv2d(1, 2, 3, padding=1),
                       Residual(nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Tanh()), nn.Sequential()),
                       nn.Flatten(), nn.Linear(32, 10))
    yield "Conv2d", wrap(nn.Conv2d(1, 2, 3, dilation=2), nn.Flatten(), nn.Linear(8, 10), side=6)
    yield "BatchNorm2d", (CertifiedNet(train_bn, [0.5], [0.5], "synthetic").train(), 4)


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
@pytest.mark.parametrize("layer,net", list(_bad_nets()), ids=lambda v: v if isinstance(v, str) else "")
def test_unsupported_layer_raises(domain, layer, net):
    model, side = net
    x = torch.rand(1, 1, side, side)
    with pytest.raises(UnsupportedLayerError, match=layer):
        bound_margins(model, x, torch.tensor([0]), 0.1, domain)


# --------------------------------------------------------------------------------------------------------------
# The model zoo
# --------------------------------------------------------------------------------------------------------------

NORM = {"mnist": ([0.1307], [0.3081], (1, 28, 28), 0.1),
        "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616], (3, 32, 32), 8 / 255)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_zoo_models_bounded_soundly(name):
    dataset = MODELS[name][0]
    mean, std, shape, eps = NORM[dataset]
    torch.manual_seed(0)
    model = build_model(name, mean, std).eval()
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial BatchNorm statistics (CNN7)
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    x = torch.rand(1, *shape, generator=gen)
    y = torch.tensor([3])
    domains = ["interval", "backward_ibp"] + (["symbolic_linear"] if name in ("MNIST_Small", "CIFAR_Small") else [])
    lo, hi = input_box_ref(x, eps, torch.float32)
    pts = lo + (hi - lo) * torch.rand(24, *shape, generator=gen)
    pts[12:] = torch.where(torch.rand(12, *shape, generator=gen) < 0.5, lo, hi)  # corners
    with torch.no_grad():
        m = margins(copy.deepcopy(model).double(), pts.double(), y.expand(24))
        emin, emax = m.min(0).values, m.max(0).values
        bounds = {}
        for d in domains:
            lb, ub = bound_margins(model, x, y, eps, d, torch.float32)
            assert lb.shape == ub.shape == (1, 10)
            assert torch.isfinite(lb).all() and torch.isfinite(ub).all()
            lb, ub = lb[0].double(), ub[0].double()
            tol = TOL32 * torch.maximum(lb.abs(), ub.abs()).clamp_min(1.0)
            assert (lb <= emin + tol).all(), f"{name}/{d}: lb above a sampled margin"
            assert (ub >= emax - tol).all(), f"{name}/{d}: ub below a sampled margin"
            bounds[d] = (lb, ub)
    lbi, ubi = bounds["interval"]
    for d, (lb, ub) in bounds.items():
        tol = TOL32 * torch.maximum(lbi.abs(), ubi.abs()).clamp_min(1.0)
        assert (lb >= lbi - tol).all() and (ub <= ubi + tol).all(), f"{name}/{d} looser than interval"


def test_interval_relu_is_clamp_min_with_one_op_backward():
    """IntervalDomain.relu uses ``F.relu`` (a one-op backward) for ``clamp_min(0)``: the same values everywhere, the
    same gradient away from exactly 0 (where either is a valid subgradient)."""
    from pipeline.bounds import IntervalDomain
    gen = torch.Generator().manual_seed(0)
    lo = torch.randn(64, 7, generator=gen, dtype=torch.float64)
    lo[0, :3] = torch.tensor([0.0, -0.0, -1e-300], dtype=torch.float64)
    hi = lo + torch.rand(64, 7, generator=gen, dtype=torch.float64)
    for t in (lo, hi):
        t.requires_grad_(True)
    out = IntervalDomain(lo, hi).relu()
    assert torch.equal(out.lo, lo.clamp_min(0)) and torch.equal(out.hi, hi.clamp_min(0))
    g = torch.randn(64, 7, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((out.lo * g).sum() + (out.hi * g).sum(), (lo, hi))
    want = torch.autograd.grad((lo.clamp_min(0) * g).sum() + (hi.clamp_min(0) * g).sum(), (lo, hi))
    for a, b, x in zip(got, want, (lo, hi)):
        nonzero = x.detach() != 0
        assert torch.equal(a[nonzero], b[nonzero])
        assert (a[~nonzero] == 0).all()
