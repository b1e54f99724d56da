"""The window (receptive-field) form of symbolic coefficient rows equals the dense form it replaces.

:mod:`pipeline.bounds.patches` stores the same equations as the dense ``[B, d, *shape]`` rows with the zeros left
out; every layer op must give the same rows (converted back with ``to_dense``) and every domain that starts from
them the same bounds as when it starts from dense rows, on random nets of every kind (strides, paddings, residual
blocks with unequal windows, BatchNorm, FC) and on the zoo's conv models.  Soundness itself is tested, for every
domain, in test_bounds_soundness.py and test_bounds_milp.py (which now run the window form).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pipeline.bounds.symbolic as symbolic
from pipeline.bounds import bound_margins, margin_lower_bounds
from pipeline.bounds.patches import PatchCoef
from pipeline.models import build_model
from bound_helpers import NET_KINDS, make_case

torch.set_default_dtype(torch.float32)


def _dense_input(monkeypatch):
    monkeypatch.setattr(symbolic, "input_rows", symbolic.input_parts)


def _random_patch(b=2, c=3, h=9, w=7, seed=0) -> tuple[PatchCoef, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    r = torch.rand(b, c, h, w, generator=gen, dtype=torch.float64)
    p = PatchCoef.from_radius(r)
    dense = torch.diag_embed(r.flatten(1)).view(b, c * h * w, c, h, w)
    return p, dense


def test_from_radius_is_the_identity():
    p, dense = _random_patch()
    assert torch.equal(p.to_dense(), dense)


@pytest.mark.parametrize("k,s,pad", [(3, 1, 1), (4, 2, 1), (2, 2, 0), (3, 2, 0), (1, 1, 0), (5, 3, 2)])
def test_conv_matches_dense(k, s, pad):
    p, dense = _random_patch()
    gen = torch.Generator().manual_seed(k * 10 + s)
    w1 = torch.randn(4, 3, k, k, generator=gen, dtype=torch.float64)
    w2 = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    b, d = dense.shape[:2]
    ref = F.conv2d(dense.reshape(b * d, *dense.shape[2:]), w1, None, s, pad)
    got = p.conv(w1, (s, s), (pad, pad))
    assert torch.allclose(got.to_dense(), ref.view(b, d, *ref.shape[1:]), atol=1e-12)
    ref2 = F.conv2d(ref, w2, None, 1, 1)
    got2 = got.conv(w2, (1, 1), (1, 1))
    assert torch.allclose(got2.to_dense(), ref2.view(b, d, *ref2.shape[1:]), atol=1e-12)
    # linear after flatten (shared and per-sample weights) and abs-sums
    n = ref2[0].numel()
    lin = torch.randn(5, n, generator=gen, dtype=torch.float64)
    flat_ref = ref2.view(b, d, n)
    assert torch.allclose(got2.flatten().linear(lin), flat_ref @ lin.t(), atol=1e-12)
    per = torch.randn(b, 5, n, generator=gen, dtype=torch.float64)
    assert torch.allclose(got2.flatten().linear(per), torch.einsum("bdn,bon->bdo", flat_ref, per), atol=1e-12)
    assert torch.allclose(got2.abs_sum(), ref2.view(b, d, *ref2.shape[1:]).abs().sum(1), atol=1e-12)


def test_add_aligns_unequal_windows():
    p, dense = _random_patch(h=8, w=8)
    gen = torch.Generator().manual_seed(3)
    wa = torch.randn(2, 3, 3, 3, generator=gen, dtype=torch.float64)
    wb = torch.randn(2, 3, 1, 1, generator=gen, dtype=torch.float64)
    a, bb = p.conv(wa, (2, 2), (1, 1)), p.conv(wb, (2, 2), (0, 0))
    assert a.patch != bb.patch and a.offset != bb.offset
    summed = a + bb
    assert isinstance(summed, PatchCoef)
    assert torch.allclose(summed.to_dense(), a.to_dense() + bb.to_dense(), atol=1e-12)
    assert torch.allclose((a - bb).to_dense(), a.to_dense() - bb.to_dense(), atol=1e-12)


@pytest.mark.parametrize("domain", ["symbolic_linear", "symbolic_interval", "backward"])
@pytest.mark.parametrize("kind", sorted(NET_KINDS))
@pytest.mark.parametrize("seed", [0, 1])
def test_domain_bounds_equal_dense_form(domain, kind, seed, monkeypatch):
    case = make_case(kind, seed)
    window = bound_margins(case.model, case.x, case.y, case.eps, domain, torch.float64)
    _dense_input(monkeypatch)
    dense = bound_margins(case.model, case.x, case.y, case.eps, domain, torch.float64)
    for w, d in zip(window, dense):
        assert torch.allclose(w, d, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("name", ["MNIST_Small", "CIFAR_Small"])
def test_zoo_bounds_and_gradients_equal_dense_form(name, monkeypatch):
    torch.manual_seed(0)
    ch, side = (1, 28) if name.startswith("MNIST") else (3, 32)
    model = build_model(name, [0.5] * ch, [0.25] * ch).eval()
    x, y = torch.rand(1, ch, side, side), torch.tensor([7])

    def run():
        model.zero_grad()
        lb, _ = bound_margins(model, x, y, 0.02, "symbolic_linear", torch.float32)
        lb.sum().backward()
        return lb.detach(), [p.grad.clone() for p in model.parameters()]
    lb_w, g_w = run()
    _dense_input(monkeypatch)
    lb_d, g_d = run()
    assert torch.allclose(lb_w, lb_d, rtol=1e-5, atol=1e-4)  # float32: summation order differs
    for a, b in zip(g_w, g_d):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


@pytest.mark.parametrize("kind", sorted(NET_KINDS))
def test_margin_lower_bounds_equal_bound_margins(kind):
    """The lower-bound-only path (nine spec rows, no upper rows) gives exactly ``bound_margins(...)[0]``."""
    from pipeline.bounds import DOMAINS, margin_lower_bounds, wong_domain
    case = make_case(kind, 0, batch=3)
    for domain in [*sorted(DOMAINS), wong_domain(None)]:
        full, _ = bound_margins(case.model, case.x, case.y, case.eps, domain, torch.float64)
        low = margin_lower_bounds(case.model, case.x, case.y, case.eps, domain, torch.float64)
        assert torch.allclose(low, full, rtol=1e-12, atol=1e-12), domain
        assert torch.all(low[torch.arange(3), case.y] == 0)


def _box_case(net: torch.nn.Module, shape: tuple[int, int, int], batch: int, seed: int):
    from pipeline.models.zoo import CertifiedNet
    torch.manual_seed(seed)
    model = CertifiedNet(net, [0.0] * shape[0], [1.0] * shape[0], "synthetic").eval()
    x = torch.rand(batch, *shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize("batch", [1, 3, 8, 9])
def test_single_neuron_flatten_then_relu_keeps_samples_apart(batch, monkeypatch):
    """A 1-neuron layer flattened and then a ReLU: the per-sample slopes must not broadcast across the batch
    (found in review: they did, giving wrong bounds or a crash depending on the batch size)."""
    from torch import nn
    net = nn.Sequential(nn.Conv2d(1, 1, 3, 2), nn.Flatten(), nn.ReLU(), nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 10))
    model, x, y = _box_case(net, (1, 4, 4), batch, 4)
    for domain in ["symbolic_linear", "symbolic_interval", "backward"]:
        window = margin_lower_bounds(model, x, y, 0.05, domain, torch.float64)
        with monkeypatch.context() as m:
            _dense_input(m)
            dense = margin_lower_bounds(model, x, y, 0.05, domain, torch.float64)
        assert torch.allclose(window, dense, rtol=1e-12, atol=1e-12), domain


def test_strided_one_by_one_conv_then_larger_kernel(monkeypatch):
    """A 1x1 convolution with stride 2 keeps single-pixel windows but a stride of 2; the next kernel's windows must
    be placed at that stride (found in review: the no-placement shortcut assumed stride 1)."""
    from torch import nn
    net = nn.Sequential(nn.Conv2d(2, 3, 1, 2), nn.ReLU(), nn.Conv2d(3, 3, 3, 1, 1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 4 * 4, 10))
    model, x, y = _box_case(net, (2, 8, 8), 2, 1)
    for domain in ["symbolic_linear", "backward"]:
        window = margin_lower_bounds(model, x, y, 0.05, domain, torch.float64)
        with monkeypatch.context() as m:
            _dense_input(m)
            dense = margin_lower_bounds(model, x, y, 0.05, domain, torch.float64)
        assert torch.allclose(window, dense, rtol=1e-12, atol=1e-12), domain
