"""Certificates that float rounding cannot fool (issue 12): nets whose huge logits cancel exactly to a negative margin,
checked in exact rational arithmetic, against every registered domain and ``verify``; the fixed threshold's failure
on them; and on ordinary nets, the rounding guard certifies exactly what the fixed threshold did."""
from __future__ import annotations

import functools
import itertools
import math
from fractions import Fraction

import pytest
import torch
from torch import nn

from pipeline.bounds import (DOMAINS, bound_margins, fold_spec, gamma, get_domain, input_box, margin_rounding_bound,
                             margin_spec, rounding_bound, to_ops, unit_roundoff, verify)
from pipeline.models.zoo import CertifiedNet
from tests.bound_helpers import all_domains, make_case, make_tiny_fc, one_thread_per_module

_one_thread = one_thread_per_module  # autouse fixture shared from bound_helpers

DOMAIN_NAMES = all_domains()
A = 2.0 ** -10  # the exact margin z0 - z1 = -A everywhere in the box
X = torch.tensor([[[[0.375, 0.5], [0.625, 0.75]]]])  # dyadic: the box [x - 1/8, x + 1/8] is exact
EPS = 0.125
Y0 = torch.tensor([0])
#: (hidden layers, weight scale): |z0| from about 3e9 (1, 1e4) to 5e35 (3, 1e8)
CONFIGS = [(1, 1e4), (1, 1e6), (1, 1e8), (2, 1e4), (2, 1e6), (2, 1e8), (3, 1e4), (3, 1e6), (3, 1e8)]
CONV_CONFIGS = [(1, 1e6), (2, 1e4), (2, 1e6)]


def cancel_net(depth: int, scale: float, seed: int, width: int = 6, conv: bool = False) -> CertifiedNet:
    """Two permuted copies of the same ``depth`` layers of ``width`` ReLUs (weights ``~scale``, biases large enough that
    every unit is active on [0, 1]^4) plus one constant unit; ``z0`` reads copy A, ``z1`` the same units in copy B
    plus ``A`` times the constant, so ``z0 - z1 = -A`` exactly while ``|z0|`` is huge; ``z2..z9 = 0``.  ``conv``: the
    first layer is a 2x2 convolution over the 2x2 image (the same map)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        sign = torch.where(torch.rand(*shape, generator=gen) < 0.5, -1.0, 1.0)
        return (sign * scale * (0.5 + torch.rand(*shape, generator=gen))).float().double()

    n = 2 * width + 1
    layers: list[nn.Module] = []
    prev_perm, vmax = None, 1.0
    for k in range(depth):
        w = rnd(width, 4 if k == 0 else width)
        b = (w.abs().sum(1) * vmax + scale * (0.5 + torch.rand(width, generator=gen).double())).float().double()
        perm = torch.randperm(width, generator=gen)
        W = torch.zeros(n, 4 if k == 0 else n, dtype=torch.float64)
        B = torch.zeros(n, dtype=torch.float64)
        if k == 0:
            W[:width], W[width:2 * width] = w, w[perm]
            B[2 * width] = 1.0  # the constant unit
        else:
            W[:width, :width] = w
            W[width:2 * width, width:2 * width] = w[perm][:, prev_perm]
            W[2 * width, 2 * width] = 1.0
        B[:width], B[width:2 * width] = b, b[perm]
        vmax = float((w.abs().sum(1) * vmax + b).max())
        prev_perm = perm
        lin = nn.Linear(W.shape[1], n)
        with torch.no_grad():
            lin.weight.copy_(W)
            lin.bias.copy_(B)
        layers += [lin, nn.ReLU()]
    v = rnd(width).abs()
    out = nn.Linear(n, 10)
    with torch.no_grad():
        out.weight.zero_()
        out.bias.zero_()
        out.weight[0, :width] = v
        out.weight[1, width:2 * width] = v[prev_perm]
        out.weight[1, 2 * width] = A
    if conv:
        c = nn.Conv2d(1, n, 2)
        with torch.no_grad():
            c.weight.copy_(layers[0].weight.view(n, 1, 2, 2))
            c.bias.copy_(layers[0].bias)
        net = nn.Sequential(c, nn.ReLU(), nn.Flatten(), *layers[2:], out)
    else:
        net = nn.Sequential(nn.Flatten(), *layers, out)
    return CertifiedNet(net, [0.0], [1.0], "synthetic").eval()


def exact_logits(model: CertifiedNet, point: torch.Tensor) -> list[Fraction]:
    """The logits at ``point`` in exact rational arithmetic (float weights convert exactly); asserts every ReLU input
    is positive, i.e. the point lies in the region where the net is the affine map the construction promises."""
    assert float(model.normalize.mean) == 0.0 and float(model.normalize.std) == 1.0
    v = [Fraction(float(t)) for t in point.flatten()]
    for m in model.net:
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if isinstance(m, nn.Conv2d):
                assert m.weight.shape[1:] == (1, 2, 2) and m.padding == (0, 0)  # one window: a linear map
            w = m.weight.detach().double().reshape(m.weight.shape[0], -1).tolist()
            b = m.bias.detach().double().tolist()
            v = [sum((Fraction(wi) * xi for wi, xi in zip(row, v)), Fraction(bi)) for row, bi in zip(w, b)]
        elif isinstance(m, nn.ReLU):
            assert min(v) > 0, "a ReLU is not active at a box corner: the construction is off"
            v = [max(t, Fraction(0)) for t in v]
    return v


def box_points(x: torch.Tensor, eps: float) -> list[torch.Tensor]:
    """``x`` and the corners of its box: the net is affine on the box (every ReLU active at every corner, so on
    their convex hull), so each margin's minimum is attained at a corner."""
    lo, hi = (x - eps).clamp(0, 1).flatten(), (x + eps).clamp(0, 1).flatten()
    corners = [torch.where(torch.tensor(c, dtype=torch.bool), hi, lo).view_as(x)
               for c in itertools.product([False, True], repeat=lo.numel())]
    return [x] + corners


@functools.lru_cache(maxsize=None)
def case(depth: int, scale: float, conv: bool = False):
    """The first seed whose float32 forward pass predicts class 0 (so ``verify`` bounds it although its true margin is
    negative), with the exact minimum of every margin ``z0 - z_j`` over the box (``[10]`` Fractions)."""
    for seed in range(40):
        net = cancel_net(depth, scale, seed, conv=conv)
        with torch.no_grad():
            if int(net(X).argmax(1)) != 0:
                continue
        logits = [exact_logits(net, p) for p in box_points(X, EPS)]
        exact_min = [min(z[0] - z[j] for z in logits) for j in range(10)]
        return net, exact_min
    raise AssertionError(f"no seed predicts class 0 for {depth, scale, conv}")


ALL_CASES = [(d, s, False) for d, s in CONFIGS] + [(d, s, True) for d, s in CONV_CONFIGS]


@pytest.mark.parametrize("depth,scale,conv", ALL_CASES)
def test_construction_cancels_exactly(depth, scale, conv):
    net, exact_min = case(depth, scale, conv)
    assert exact_min[1] == -Fraction(A), "z0 - z1 must be exactly -A on the whole box"
    assert all(m > 0 for m in exact_min[2:])
    z0 = exact_logits(net, X)[0]
    assert z0 > 1e9 * scale / 1e4  # the logits are huge: |z0| ~ 3e9 (1, 1e4) ... 5e35 (3, 1e8)
    assert exact_logits(net, X)[1] - z0 == Fraction(A)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("depth,scale,conv", ALL_CASES)
def test_domain_bound_minus_rounding_bound_is_sound(depth, scale, conv, dtype):
    """For every registered domain: ``lb - E`` never exceeds the exact minimum margin (in exact arithmetic)."""
    net, exact_min = case(depth, scale, conv)
    for name in DOMAIN_NAMES:
        with torch.no_grad():
            lb, _ = bound_margins(net, X, Y0, EPS, name, dtype)
        e = margin_rounding_bound(net, X, Y0, EPS, [get_domain(name)], dtype)
        for j in range(1, 10):
            lbj, ej = float(lb[0, j]), float(e[0, j])
            if math.isnan(lbj) or ej == math.inf or lbj == -math.inf:
                continue  # no claim
            assert math.isfinite(lbj) and math.isfinite(ej), (name, j, lbj, ej)
            assert Fraction(lbj) - Fraction(ej) <= exact_min[j], (
                f"{name} {dtype}: margin {j}: lb {lbj:.6e} - E {ej:.3e} exceeds the exact minimum "
                f"{float(exact_min[j]):.6e}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("depth,scale,conv", ALL_CASES)
def test_verify_never_certifies_a_negative_exact_margin(depth, scale, conv, dtype):
    net, exact_min = case(depth, scale, conv)
    assert min(exact_min[1:]) <= 0
    for doms in [DOMAIN_NAMES] + [[d] for d in DOMAIN_NAMES]:
        res = verify(net, X, Y0, EPS, doms, dtype=dtype)
        assert res.threshold[0] is not None, "the sample must be bounded (float32 predicts class 0)"
        assert res.verified == [False], f"{doms} {dtype} certified a margin of exactly {float(exact_min[1])}"


def test_fixed_threshold_certifies_negative_margins():
    """The old decision (``lb > margin_tol``, ``rounding_guard=False``) certifies some of these nets although their
    exact margin is -A: the tests above can fail, and the guard is what makes them pass."""
    fooled = []
    for depth, scale, conv in ALL_CASES:
        net, exact_min = case(depth, scale, conv)
        old = verify(net, X, Y0, EPS, DOMAIN_NAMES, rounding_guard=False)
        new = verify(net, X, Y0, EPS, DOMAIN_NAMES)
        assert new.verified == [False]
        if old.verified[0]:
            fooled.append((depth, scale, conv, old.domain[0], old.min_margin_lb[0]))
            assert old.min_margin_lb[0] > 1e-4 and new.min_margin_lb[0] == old.min_margin_lb[0]
            assert new.threshold[0] > new.min_margin_lb[0]
    assert len(fooled) >= 3, fooled
    assert any(scale <= 1e4 for _, scale, _, _, _ in fooled), fooled  # already at |z0| ~ 1e14


def test_issue_configuration():
    """The issue's net: 4 inputs, 13 ReLUs, weights ~1e6, |z0| ~ 3e13, z0 - z1 = -2^-10 exactly.  The fixed threshold
    certifies it (by ``backward``) for several seeds; the guard never does."""
    fooled = 0
    for seed in range(40):
        net = cancel_net(1, 1e6, seed)
        with torch.no_grad():
            if int(net(X).argmax(1)) != 0:
                continue
        old = verify(net, X, Y0, EPS, DOMAIN_NAMES, rounding_guard=False)
        if not old.verified[0]:
            continue
        logits = [exact_logits(net, p) for p in box_points(X, EPS)]
        assert min(z[0] - z[1] for z in logits) == -Fraction(A) and 1e13 < logits[0][0] < 1e14
        assert verify(net, X, Y0, EPS, DOMAIN_NAMES).verified == [False]
        fooled += 1
        if fooled == 3:
            break
    assert fooled == 3


def test_rounding_bound_scales_with_the_logits():
    """Scaling the output layer by a power of two scales every margin, and the bound, by exactly that factor."""
    net = make_tiny_fc(7, widths=(8, 6))
    x = torch.rand(2, 1, 2, 3, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([3, 5])
    doms = [get_domain(d) for d in DOMAIN_NAMES]
    e1 = margin_rounding_bound(net, x, y, 0.05, doms)
    with torch.no_grad():
        net.net[-1].weight.mul_(2.0 ** 30)
        net.net[-1].bias.mul_(2.0 ** 30)
    e2 = margin_rounding_bound(net, x, y, 0.05, doms)
    torch.testing.assert_close(e2, e1 * 2.0 ** 30, rtol=1e-12, atol=0)
    assert (e1[torch.arange(2), y] == 0).all() and (e1.sum(1) > 0).all()


def test_rounding_bound_follows_the_unit_roundoff():
    net = make_tiny_fc(8)
    x = torch.rand(1, 1, 2, 3, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([1])
    doms = [get_domain("backward")]
    e64 = margin_rounding_bound(net, x, y, 0.05, doms, torch.float64)
    e32 = margin_rounding_bound(net, x, y, 0.05, doms, torch.float32)
    ratio = (e32.sum() / e64.sum()).item()
    assert 2.0 ** 29 * 0.99 < ratio < 2.0 ** 29 * 1.01  # u32 / u64 (gamma_n is linear in u while n u << 1)
    assert unit_roundoff(torch.float64) == 2.0 ** -53 and unit_roundoff(torch.float32) == 2.0 ** -24
    assert gamma(10, 2.0 ** -53) > 10 * 2.0 ** -53 and gamma(2 ** 60, 2.0 ** -53) == math.inf


def test_cancelling_batchnorm_shift_is_charged_by_its_terms():
    """BatchNorm folds to the shift ``beta - mean * scale``, which may cancel: its rounding is relative to the terms,
    not to the (small) result, so ``margin_rounding_bound`` charges ``|beta| + |mean * scale|``."""
    big = 2.0 ** 40
    bn = nn.BatchNorm1d(4)
    with torch.no_grad():
        bn.running_mean.fill_(big)
        bn.running_var.fill_(3.0)
        bn.bias.fill_(big / math.sqrt(3.0 + bn.eps) + 2.0 ** 20)  # the folded shift: about +1e6, the terms 6e11
    torch.manual_seed(0)
    net = CertifiedNet(nn.Sequential(nn.Flatten(), nn.Linear(4, 4), bn, nn.ReLU(), nn.Linear(4, 10)), [0.0], [1.0],
                       "synthetic").eval()
    x = torch.full((1, 1, 2, 2), 0.5)
    y = torch.tensor([2])
    doms = [get_domain("interval")]
    spec = margin_spec(y, 10, torch.float64)
    lo, hi = input_box(x.double(), 0.1)
    naive = rounding_bound(fold_spec(to_ops(net, torch.float64), spec), lo, hi, torch.float64, doms)
    charged = margin_rounding_bound(net, x, y, 0.1, doms)
    keep = torch.arange(10) != y
    assert (charged[:, keep] >= naive[:, keep]).all() and charged.max() > 1e3 * naive.max()
    assert charged.max() > unit_roundoff(torch.float64) * big * 1e-2


# --------------------------------------------------------------------------------------------------------------
# Realistic nets: the guard costs nothing
# --------------------------------------------------------------------------------------------------------------

def _same_decisions(model, x, y, eps, domains):
    new = verify(model, x, y, eps, domains)
    old = verify(model, x, y, eps, domains, rounding_guard=False)
    assert new.verified == old.verified and new.domain == old.domain
    assert new.min_margin_lb == old.min_margin_lb
    # the rounding deductions plus the float32 logit guard (4 u32 (|z_y| + |z_j|), ~1e-6 for logits of a few units):
    # an order of magnitude below margin_tol
    extra = [t - 1e-4 for t in new.threshold if t is not None]
    assert extra and max(extra) < 1e-5, max(extra)
    return sum(new.verified)


def test_random_small_nets_certify_the_same_samples():
    certified = 0
    for kind, seed in itertools.product(["fc", "fc_bn1d", "conv", "conv_bn", "residual", "residual_down_bn",
                                         "fc_tail"], range(2)):
        c = make_case(kind, 700 + seed, batch=4, eps=0.002)
        with torch.no_grad():
            y = c.model(c.x).argmax(1)  # every sample classified "correctly": all of them get bounded
        certified += _same_decisions(c.model, c.x, y, c.eps, DOMAIN_NAMES)
    assert certified >= 10, certified


def test_briefly_trained_zoo_model_certifies_the_same_samples():
    """MNIST_Small (Wong et al.'s conv net), 30 Adam steps on random digits-like data, its params.yaml domains."""
    from pipeline.models import build_model

    torch.manual_seed(0)
    model = build_model("MNIST_Small", [0.0], [1.0])
    gen = torch.Generator().manual_seed(3)
    xs = torch.rand(64, 1, 28, 28, generator=gen)
    ys = torch.randint(0, 10, (64,), generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for i in range(30):
        loss = nn.functional.cross_entropy(model(xs[i % 4 * 16:(i % 4 + 1) * 16]), ys[i % 4 * 16:(i % 4 + 1) * 16])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x = torch.rand(8, 1, 28, 28, generator=gen)
    with torch.no_grad():
        y = model(x).argmax(1)
    assert _same_decisions(model, x, y, 0.002, ["interval", "symbolic_linear", "backward"]) >= 4


def test_non_finite_bound_certifies_nothing(monkeypatch):
    """An overflowing bound (+inf, NaN) proves nothing, with or without a finite deduction."""
    import importlib

    verify_mod = importlib.import_module("pipeline.bounds.verify")
    net = make_tiny_fc(9)
    x = torch.rand(2, 1, 2, 3, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = net(x).argmax(1)
    real = verify_mod.bound_margins

    def overflowing(*args, **kwargs):
        lb, ub = real(*args, **kwargs)
        lb = lb.clone()
        lb[0] = float("inf")
        lb[1] = float("nan")
        return lb, ub
    monkeypatch.setattr(verify_mod, "bound_margins", overflowing)
    res = verify(net, x, y, 0.01, ["interval"])
    assert res.verified == [False, False]


def test_exact_kernels_force_ieee_float32_and_restore_the_settings():
    from pipeline.bounds.verify import _PRECISION_SETTINGS, _exact_kernels

    def settings():
        out = [torch.get_float32_matmul_precision()]
        for path in _PRECISION_SETTINGS:
            obj = torch.backends
            for part in path.split("."):
                obj = getattr(obj, part, None)
            out.append(getattr(obj, "fp32_precision", None))
        return out
    before = settings()
    with _exact_kernels(torch.device("cpu")):
        inside = settings()
    assert inside[0] == "highest" and all(v in ("ieee", None) for v in inside[1:])
    assert settings() == before


def test_every_registered_domain_is_analysed():
    """Each registered domain falls in a family of the derivation (docs/bounds.md); a new one must be added there."""
    from pipeline.bounds.rounding import family

    for name, cls in DOMAINS.items():
        assert family(cls) is not None, f"{name}: no rounding analysis (see docs/bounds.md)"


def _two_logit_net(w0: float, w1: float, b: float) -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, 10)).eval()
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.fill_(-abs(b))
        net[1].weight[0, 0], net[1].weight[1, 0] = w0, w1
        net[1].bias[0] = net[1].bias[1] = b
    return net


def test_float32_logit_tie_is_not_certified():
    """Real margin > 0 everywhere (w1 is the next float32 above w0), but the float32 forward rounds both logits to
    the same value near 1.5e4 and argmax picks class 0: the deployed network misclassifies inside the ball."""
    w0 = torch.tensor(1e4)
    w1 = torch.nextafter(w0, torch.tensor(2e4))
    net = _two_logit_net(w0.item(), w1.item(), 1e4)
    x, y, eps = torch.full((1, 1, 1, 1), 0.55005), torch.tensor([1]), 0.05
    assert net(x).argmax(1).item() == 1
    ball = torch.linspace(0.50005, 0.60005, 2001).view(-1, 1, 1, 1)
    assert (net(ball).argmax(1) != 1).any()  # the float32 network does break it
    assert verify(net, x, y, eps, ["interval", "backward"]).verified == [False]
    assert verify(net, x, y, eps, ["interval", "backward"], rounding_guard=False).verified == [True]


def test_logits_near_float32_overflow_are_not_certified():
    net = _two_logit_net(1e38, 1.01e38, 2.3e38)
    x, y = torch.full((1, 1, 1, 1), 1.0), torch.tensor([1])
    res = verify(net, x, y, 0.05, ["interval"])
    assert res.verified == [False] and res.threshold[0] == float("inf")
