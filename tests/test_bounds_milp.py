"""Every domain against the exact margin extrema of tiny FC ReLU nets (MILP, HiGHS), exactness when no ReLU is
unstable, and the float-rounding guard of ``verify``."""
from __future__ import annotations

import copy
import functools
import importlib

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.bounds import bound_margins, verify
from pipeline.models.zoo import CertifiedNet
from tests.bound_helpers import (NET_KINDS, TOL32, all_domains, empirical_extremes, exact_margin_extrema,
                                 exact_margin_max, exact_margin_min, input_box_ref, interval_preacts, make_case,
                                 make_tiny_fc, margins, one_thread_per_module)

# (``pipeline.bounds.verify`` the attribute is the function; the module is needed to spy on its bound_margins)
verify_mod = importlib.import_module("pipeline.bounds.verify")
DOMAIN_NAMES = all_domains()
SEEDS = range(24)
ATOL = 1e-6


_one_thread = one_thread_per_module  # autouse fixture shared from bound_helpers


@functools.lru_cache(maxsize=None)
def _instance(seed: int):
    """A tiny net (6 inputs as 1x2x3 or 2x1x3, two hidden layers of <= 8 ReLUs), one input, its exact extrema."""
    shape = (1, 2, 3) if seed % 2 == 0 else (2, 1, 3)
    widths = [(8, 8), (6, 8), (8, 5)][seed % 3]
    net = make_tiny_fc(seed, widths=widths, input_shape=shape, bn1d=seed % 4 == 3)
    gen = torch.Generator().manual_seed(40_000 + seed)
    x = torch.rand(1, *shape, generator=gen)
    x = torch.where(torch.rand(x.shape, generator=gen) < 0.15, x.round(), x)
    y = torch.randint(0, 10, (1,), generator=gen)
    eps = [0.03, 0.06, 0.1, 0.15][seed % 4]
    mn, argmin = exact_margin_min(net, x, y, eps, return_argmin=True)
    mx, argmax = exact_margin_max(net, x, y, eps, return_argmax=True)
    return net, x, y, eps, mn, argmin, mx, argmax


def _n_unstable(net, x, eps):
    lo, hi = (t.flatten().numpy() for t in input_box_ref(x[0], eps))
    return int(sum(((l < 0) & (u > 0)).sum() for l, u in interval_preacts(net, lo, hi)[:-1]))


def test_milp_instances_have_unstable_relus():
    counts = [_n_unstable(*_instance(s)[:2], _instance(s)[3]) for s in SEEDS]
    assert sum(c > 0 for c in counts) >= 0.8 * len(counts), counts
    assert sum(counts) >= 3 * len(counts), counts


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_bounds_contain_exact_extrema(domain, seed):
    net, x, y, eps, mn, _, mx, _ = _instance(seed)
    with torch.no_grad():
        lb, ub = bound_margins(net, x, y, eps, domain, torch.float64)
    assert (lb <= mn + ATOL).all(), f"{domain}: lb exceeds the exact minimum by {(lb - mn).max():.3e}"
    assert (ub >= mx - ATOL).all(), f"{domain}: ub below the exact maximum by {(mx - ub).max():.3e}"
    with torch.no_grad():
        lb32, ub32 = (t.double() for t in bound_margins(net, x, y, eps, domain, torch.float32))
    tol = ATOL + TOL32 * torch.maximum(lb32.abs(), ub32.abs()).clamp_min(1.0)
    assert (lb32 <= mn + tol).all(), f"{domain} float32: lb exceeds the exact minimum by {(lb32 - mn).max():.3e}"
    assert (ub32 >= mx - tol).all(), f"{domain} float32: ub below the exact maximum by {(mx - ub32).max():.3e}"


@pytest.mark.parametrize("seed", SEEDS)
def test_exact_extrema_are_attained(seed):
    """The MILP optimum is real: the network at the MILP's argmin/argmax gives the MILP value, the point lies in the
    box, and no sampled/PGD point beats it."""
    net, x, y, eps, mn, argmin, mx, argmax = _instance(seed)
    model64 = copy.deepcopy(net).double()
    lo, hi = input_box_ref(x, eps)
    keep = torch.arange(10) != y  # the y-th margin is identically 0 and not optimised
    with torch.no_grad():
        for vals, args in ((mn, argmin), (mx, argmax)):
            pts = args[0]  # [10 (optimised margin j), *shape]
            assert (pts[keep] >= lo - 1e-9).all() and (pts[keep] <= hi + 1e-9).all()
            at = margins(model64, torch.minimum(torch.maximum(pts, lo), hi), y.expand(10))  # [10 (j), 10]
            torch.testing.assert_close(at.diagonal()[keep], vals[0][keep], atol=ATOL, rtol=0)
    emin, emax = empirical_extremes(net, x, y, eps, seed=seed)
    assert (emin >= mn - ATOL).all(), "PGD/sampling found a margin below the 'exact' minimum"
    assert (emax <= mx + ATOL).all(), "PGD/sampling found a margin above the 'exact' maximum"


# --------------------------------------------------------------------------------------------------------------
# Conv / BatchNorm / residual nets: the exact extrema from a MILP over traced affine forms
# --------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _general_instance(kind: str, seed: int):
    c = make_case(kind, 500 + seed, batch=1, eps=[0.02, 0.05][seed])
    mn, mx, argmin, argmax = exact_margin_extrema(c.model, c.x[0], int(c.y[0]), c.eps)
    return c, mn, mx, argmin, argmax


@pytest.mark.parametrize("seed", range(2))
def test_general_milp_agrees_with_fc_milp(seed):
    net, x, y, eps, mn, _, mx, _ = _instance(seed)
    gmn, gmx, _, _ = exact_margin_extrema(net, x[0], int(y[0]), eps)
    torch.testing.assert_close(gmn, mn[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(gmx, mx[0], atol=ATOL, rtol=0)


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("kind", sorted(NET_KINDS))
def test_general_milp_extrema_are_attained(kind, seed):
    c, mn, mx, argmin, argmax = _general_instance(kind, seed)
    model64 = copy.deepcopy(c.model).double()
    keep = torch.arange(10) != c.y[0]
    with torch.no_grad():
        for vals, pts in ((mn, argmin), (mx, argmax)):
            at = margins(model64, pts, c.y.expand(10)).diagonal()
            torch.testing.assert_close(at[keep], vals[keep], atol=ATOL, rtol=0)
    emin, emax = empirical_extremes(c.model, c.x, c.y, c.eps, n_uniform=300, n_corners=100, seed=seed)
    assert (emin[0] >= mn - ATOL).all() and (emax[0] <= mx + ATOL).all()


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("kind", sorted(NET_KINDS))
@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_bounds_contain_exact_extrema_all_kinds(domain, kind, seed):
    c, mn, mx, _, _ = _general_instance(kind, seed)
    with torch.no_grad():
        lb, ub = bound_margins(c.model, c.x, c.y, c.eps, domain, torch.float64)
    assert (lb[0] <= mn + ATOL).all(), f"{domain}: lb exceeds the exact minimum by {(lb[0] - mn).max():.3e}"
    assert (ub[0] >= mx - ATOL).all(), f"{domain}: ub below the exact maximum by {(mx - ub[0]).max():.3e}"


# --------------------------------------------------------------------------------------------------------------
# No unstable ReLU: every relaxation is exact
# --------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _stable_instances():
    out = []
    for seed in range(100):
        shape = (1, 2, 3) if seed % 2 == 0 else (2, 1, 3)
        net = make_tiny_fc(1000 + seed, widths=(8, 6), input_shape=shape, bn1d=seed % 3 == 0, bias_scale=1.5)
        gen = torch.Generator().manual_seed(50_000 + seed)
        x = torch.rand(1, *shape, generator=gen)
        y = torch.randint(0, 10, (1,), generator=gen)
        eps = 0.004
        if _n_unstable(net, x, eps) == 0:
            out.append((net, x, y, eps, exact_margin_min(net, x, y, eps), exact_margin_max(net, x, y, eps)))
        if len(out) == 8:
            break
    return out


def test_enough_stable_instances():
    assert len(_stable_instances()) == 8


@pytest.mark.parametrize("idx", range(8))
@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_exact_when_no_relu_is_unstable(domain, idx):
    net, x, y, eps, mn, mx = _stable_instances()[idx]
    lo, hi = (t.flatten().numpy() for t in input_box_ref(x[0], eps))
    pre = interval_preacts(net, lo, hi)[:-1]
    assert all(((l >= 0) | (u <= 0)).all() for l, u in pre), "test net has an unstable ReLU"
    assert sum(int((l >= 0).sum()) for l, _ in pre) > 0, "no active ReLU: the net would be trivially constant"
    with torch.no_grad():
        lb, ub = bound_margins(net, x, y, eps, domain, torch.float64)
    if domain == "interval":
        # IBP is exact for a single affine layer only: |W2||W1| >= |W2 W1|, so on a stable multi-layer net it is
        # merely sound.
        assert (lb <= mn + 1e-9).all() and (ub >= mx - 1e-9).all()
    else:
        torch.testing.assert_close(lb, mn, atol=ATOL, rtol=0)
        torch.testing.assert_close(ub, mx, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# verify(): float-rounding guard and end-to-end soundness of "verified"
# --------------------------------------------------------------------------------------------------------------

def _linear_net(y: int, bias: float) -> CertifiedNet:
    """Logits ``z_y = x[0] + bias`` and ``z_j = 0``: the margin's exact minimum over the box is ``lo[0] + bias``."""
    lin = nn.Linear(4, 10)
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[y, 0] = 1.0
        lin.bias[y] = bias
    return CertifiedNet(nn.Sequential(nn.Flatten(), lin), [0.0], [1.0], "synthetic").eval()


@pytest.mark.parametrize("domain", DOMAIN_NAMES)
def test_verify_rejects_tiny_positive_margin_by_default(domain):
    y = torch.tensor([4])
    net = _linear_net(4, -0.25)
    x = torch.full((1, 1, 2, 2), 0.5)
    eps = 0.25 - 1e-7  # exact minimum margin: 0.5 - eps - 0.25 = 1e-7 (up to float64 rounding)
    exact = 0.5 - eps - 0.25
    assert 0.9e-7 < exact < 1.1e-7
    assert net(x).argmax(1).item() == 4
    lo, _ = input_box_ref(x, eps)
    assert margins(copy.deepcopy(net).double(), lo, y)[0, 0].item() == pytest.approx(exact, abs=1e-15)

    res = verify(net, x, y, eps, [domain])
    assert res.verified == [False], "a margin of 1e-7 must not be certified with the default margin_tol"
    assert res.domain == [None]
    assert res.min_margin_lb[0] == pytest.approx(exact, abs=1e-15)
    # the real-arithmetic claim (no slack for the deployed float32 network's rounding, which alone would refuse a
    # margin of 1e-7 at logits of 0.25: tests/test_rounding_soundness.py)
    res0 = verify(net, x, y, eps, [domain], margin_tol=0.0, float32_guard=False)
    assert res0.verified == [True]
    assert res0.domain == [domain]


def test_verify_bounds_in_float64_by_default(monkeypatch):
    y = torch.tensor([2])
    net = _linear_net(2, -0.25)
    x = torch.full((1, 1, 2, 2), 0.5)
    eps = 0.25 - 1e-12  # exact minimum margin 1e-12: positive in float64, rounds to 0 in float32
    seen = []
    real = verify_mod.margin_lower_bounds

    def spy(*args, **kwargs):
        lb = real(*args, **kwargs)
        seen.append(lb.dtype)
        return lb

    monkeypatch.setattr(verify_mod, "margin_lower_bounds", spy)
    for domain in DOMAIN_NAMES:
        seen.clear()
        assert verify(net, x, y, eps, [domain], margin_tol=0.0, float32_guard=False).verified == [True], domain
        assert seen == [torch.float64]
        assert verify(net, x, y, eps, [domain], dtype=torch.float32, margin_tol=0.0,
                      float32_guard=False).verified == [False], domain
        assert seen == [torch.float64, torch.float32]


@pytest.mark.parametrize("seed", range(8))
def test_verified_samples_have_positive_exact_margin(seed):
    """End to end: anything ``verify`` certifies has a positive exact minimum margin (MILP), for every domain."""
    net = make_tiny_fc(2000 + seed, widths=(8, 6), input_shape=(1, 2, 3), bn1d=seed % 2 == 1)
    gen = torch.Generator().manual_seed(60_000 + seed)
    x = torch.rand(4, 1, 2, 3, generator=gen)
    with torch.no_grad():
        y = net(x).argmax(1)
    eps = [0.01, 0.03][seed % 2]
    exact = exact_margin_min(net, x, y, eps)
    exact[torch.arange(4), y] = np.inf
    exact_min = exact.min(1).values
    n_verified = 0
    for domain in DOMAIN_NAMES + [DOMAIN_NAMES]:
        doms = domain if isinstance(domain, list) else [domain]
        res = verify(net, x, y, eps, doms)
        for i, v in enumerate(res.verified):
            if v:
                n_verified += 1
                assert exact_min[i] > 1e-4, f"{doms} verified sample {i} whose exact min margin is {exact_min[i]}"
                assert res.min_margin_lb[i] <= exact_min[i].item() + 1e-9
    assert n_verified > 0, "no sample verified: the test is vacuous"


def test_verify_never_certifies_misclassified_samples():
    net = make_tiny_fc(3000, widths=(8, 6))
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(6, 1, 2, 3, generator=gen)
    with torch.no_grad():
        pred = net(x).argmax(1)
    wrong = (pred + 1 + torch.arange(6) % 9) % 10
    res = verify(net, x, wrong, 0.0, DOMAIN_NAMES, margin_tol=0.0)
    assert res.verified == [False] * 6
    assert res.domain == [None] * 6


def test_verify_result_does_not_depend_on_batching_or_domain_order():
    net = make_tiny_fc(3001, widths=(8, 6))
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(9, 1, 2, 3, generator=gen)
    with torch.no_grad():
        y = net(x).argmax(1)
    y[::4] = (y[::4] + 1) % 10  # some misclassified
    ref = verify(net, x, y, 0.02, DOMAIN_NAMES)
    assert any(ref.verified) and not all(ref.verified)
    for batch_size, doms in ((1, DOMAIN_NAMES), (4, DOMAIN_NAMES[::-1])):
        res = verify(net, x, y, 0.02, doms, batch_size=batch_size)
        assert res.verified == ref.verified
