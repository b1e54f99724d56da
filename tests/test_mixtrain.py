"""MixTrain: the k-sampler, α schedules on scripted accuracies, α=0 equals natural training, k=batch is full
verified training."""
import copy

import pytest
import torch
import torch.nn.functional as F

from pipeline.bounds import bound_margins, verified_loss
from pipeline.models import build_model
from pipeline.train import get_method
from pipeline.train.alpha import AlphaSchedule, alpha_schedule
from pipeline.train.mixtrain import sample_indices

PARAMS = {"domain": "symbolic_linear", "k": 3, "alpha": 0.5, "alpha_rule": {"kind": "constant", "start": 0.5}}


def test_sampler_draws_k_distinct_reproducibly():
    for k in (1, 5, 50, 80):
        a = sample_indices(50, k, torch.Generator().manual_seed(1))
        b = sample_indices(50, k, torch.Generator().manual_seed(1))
        assert torch.equal(a, b) and len(set(a.tolist())) == min(k, 50) and a.max() < 50
    g = torch.Generator().manual_seed(2)
    draws = {tuple(sample_indices(50, 1, g).tolist()) for _ in range(50)}
    assert len(draws) > 10  # successive draws differ


def test_cifar_rule_on_scripted_accuracies():
    s = alpha_schedule("adaptive", {"kind": "cifar", "start": 0.4, "step": 0.05, "max": 0.8, "min": 0.0,
                                    "every": 5, "target_acc": 0.7})
    values = [s.update(e, acc) for e, acc in zip(range(1, 31), [0.75] * 15 + [0.65] * 5 + [0.8] * 10)]
    # unchanged between multiples of 5; +0.05 at 5, 10, 15; -0.05 at 20 (acc below 70%); +0.05 at 25, 30
    assert values[3] == 0.4 and values[4] == 0.45 and values[9] == 0.5 and values[14] == 0.55
    assert values[19] == 0.5 and values[24] == 0.55 and values[29] == 0.6
    capped = AlphaSchedule("cifar", 0.8, max=0.8)
    assert capped.update(5, 0.9) == 0.8


def test_staircase_follows_accuracy_direction():
    s = AlphaSchedule("staircase", 0.5, step=0.1, every=2, min=0.2, max=0.7)
    accs = [0.5, 0.6, 0.6, 0.7, 0.7, 0.65, 0.6, 0.5]
    out = [s.update(e, a) for e, a in enumerate(accs, 1)]
    assert out == [0.5, 0.6, 0.6, 0.7, 0.7, 0.6, 0.6, 0.5]


def test_constant_alpha_and_bad_values():
    s = alpha_schedule(0.3, {"kind": "cifar", "start": 0.4})
    assert [s.update(e, 0.1) for e in range(1, 11)] == [0.3] * 10
    with pytest.raises(ValueError, match="alpha"):
        alpha_schedule("sometimes", {})
    with pytest.raises(ValueError, match="alpha_rule.kind"):
        AlphaSchedule("wobbly", 0.5)


def _batch(n=6):
    torch.manual_seed(0)
    return torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,))


def test_alpha_zero_equals_natural_step_for_step():
    x, y = _batch()
    torch.manual_seed(1)
    m1 = build_model("MNIST_Small", [0.0], [1.0])
    m2 = copy.deepcopy(m1)
    nat = get_method("natural")({}, "mnist", 0)
    mix = get_method("mixtrain")({**PARAMS, "alpha": 0.0}, "mnist", 0)
    o1, o2 = torch.optim.Adam(m1.parameters()), torch.optim.Adam(m2.parameters())
    for _ in range(3):
        for m, meth, o in ((m1, nat, o1), (m2, mix, o2)):
            loss, _ = meth.loss(m, x, y, 0.1)
            o.zero_grad()
            loss.backward()
            o.step()
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_k_equal_batch_is_full_verified_loss():
    x, y = _batch()
    model = build_model("MNIST_Small", [0.0], [1.0])
    mix = get_method("mixtrain")({**PARAMS, "k": len(y), "alpha": 1.0}, "mnist", 0)
    loss, _ = mix.loss(model, x, y, 0.05)
    lb, _ = bound_margins(model, x, y, 0.05, "symbolic_linear")
    torch.testing.assert_close(loss, verified_loss(lb, y))


def test_mixed_loss_combines_natural_and_verified():
    x, y = _batch()
    model = build_model("MNIST_Small", [0.0], [1.0])
    mix = get_method("mixtrain")({**PARAMS, "k": 2, "alpha": 0.25, "domain": "interval"}, "mnist", 5)
    loss, stats = mix.loss(model, x, y, 0.05)
    idx = sample_indices(len(y), 2, torch.Generator().manual_seed(5 + 7919))
    lb, _ = bound_margins(model, x[idx], y[idx], 0.05, "interval")
    expected = 0.75 * F.cross_entropy(model(x), y) + 0.25 * verified_loss(lb, y[idx])
    torch.testing.assert_close(loss, expected)
    assert stats["verified_loss"] > 0
