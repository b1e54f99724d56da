"""Compiled bound kernels (pipeline.bounds.kernels): the same bound as the eager kernels, used only for training
losses, never by verification, and an eager fallback when compilation fails."""
import dataclasses

import torch

import pipeline.bounds.kernels as kernels
from pipeline.bounds import margin_lower_bounds, verified_loss, verify
from pipeline.bounds.kernels import compiled_kernels, eager_kernels, relu_back, relu_back_kernel
from pipeline.config import load_params
from pipeline.models import build_model
from pipeline.runconfig import TrainConfig, train_configs


def _net_and_batch(seed=0, n=6):
    torch.manual_seed(seed)
    model = build_model("MNIST_Small", [0.1307], [0.3081]).eval()
    return model, torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,))


def test_kernel_choice_follows_the_innermost_block():
    assert relu_back_kernel() is relu_back
    with compiled_kernels():
        assert relu_back_kernel() is not relu_back
        with eager_kernels():  # verification inside a training step still gets the eager kernel
            assert relu_back_kernel() is relu_back
        assert relu_back_kernel() is not relu_back
    with compiled_kernels(False):
        assert relu_back_kernel() is relu_back
    assert relu_back_kernel() is relu_back


def test_verify_inside_a_compiled_block_uses_the_eager_kernels(monkeypatch):
    calls = []
    monkeypatch.setattr(kernels, "_compiled_relu_back", lambda *a: calls.append(1) or relu_back(*a))
    model, x, y = _net_and_batch()
    outside = verify(model, x, y, 0.01, ["backward_ibp"], batch_size=8)
    with compiled_kernels():
        inside = verify(model, x, y, 0.01, ["backward_ibp"], batch_size=8)
        margin_lower_bounds(model, x, y, 0.01, "backward_ibp")  # a training bound does use it
    assert inside == outside and len(calls) == 3  # one per ReLU of MNIST_Small, from the training bound only


def test_a_failing_compiler_falls_back_to_eager_and_says_so(monkeypatch, capsys):
    def broken(*a, **k):
        raise RuntimeError("no C compiler")
    monkeypatch.setattr(kernels, "_compiled", broken)
    monkeypatch.setattr(kernels, "_failed", False)
    model, x, y = _net_and_batch()
    ref = margin_lower_bounds(model, x, y, 0.02, "backward_ibp")
    with compiled_kernels():
        got = margin_lower_bounds(model, x, y, 0.02, "backward_ibp")
        assert relu_back_kernel() is relu_back  # failed once: eager from then on
    assert torch.equal(got, ref)
    assert "torch.compile failed (RuntimeError: no C compiler); using the eager kernels" in capsys.readouterr().err


def test_compiled_bound_and_gradients_match_the_eager_ones():
    """The compiled kernel (inductor; tens of seconds to build once) gives the eager CROWN-IBP bound up to float
    summation order, and the same gradients."""
    model, x, y = _net_and_batch(seed=1, n=5)
    model.train()

    def loss_and_grads():
        model.zero_grad()
        lb = margin_lower_bounds(model, x, y, 0.03, "backward_ibp")
        verified_loss(lb, y).backward()
        return lb.detach(), [p.grad.clone() for p in model.parameters()]

    lb_ref, g_ref = loss_and_grads()
    with compiled_kernels():
        lb_c, g_c = loss_and_grads()
    assert not kernels._failed, "torch.compile failed on this machine"
    torch.testing.assert_close(lb_c, lb_ref, rtol=1e-5, atol=1e-4)
    for a, b in zip(g_c, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compile_bounds_is_in_the_digest_when_on_and_absent_from_config_files_when_off():
    from conftest import ROOT
    cfg = next(iter(train_configs(load_params(ROOT / "params.yaml", {"scale": "smoke"})).values()))
    assert cfg.compile_bounds is False and '"compile_bounds"' not in cfg.to_json()  # files written before it
    on = dataclasses.replace(cfg, compile_bounds=True)
    assert '"compile_bounds": true' in on.to_json() and on.digest() != cfg.digest()
    assert TrainConfig.from_json(on.to_json()) == on and TrainConfig.from_json(cfg.to_json()) == cfg
