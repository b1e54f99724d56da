"""Madry PGD training: trains on in-ball points that raise the loss, reproducibly, with the evaluation's PGD."""
import pytest
import torch
import torch.nn.functional as F

from pipeline.models import build_model
from pipeline.train import get_method

PARAMS = {"steps": 10, "step": 0.02, "random_start": True}


def _setup(seed=0):
    torch.manual_seed(seed)
    model = build_model("MNIST_Small", [0.1307], [0.3081])
    return model, torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))


def test_madry_loss_is_the_loss_at_a_stronger_in_ball_point():
    model, x, y = _setup()
    method = get_method("madry")(PARAMS, "mnist", 0)
    seen = {}
    orig = model.forward

    def spy(inp):
        seen["x"] = inp.detach().clone()
        return orig(inp)
    model.forward = spy
    loss, stats = method.loss(model, x, y, eps=0.1)
    x_adv = seen["x"]  # the last forward is the training forward on the adversarial batch
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        clean = F.cross_entropy(orig(x), y)
    assert loss.item() > clean.item()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_madry_is_reproducible_and_resumable():
    model, x, y = _setup(1)
    a = get_method("madry")(PARAMS, "mnist", 3)
    b = get_method("madry")(PARAMS, "mnist", 3)
    assert torch.equal(a.loss(model, x, y, 0.1)[0], b.loss(model, x, y, 0.1)[0])
    state = a.state_dict()
    next_a = a.loss(model, x, y, 0.1)[0]
    c = get_method("madry")(PARAMS, "mnist", 99)
    c.load_state_dict(state)
    assert torch.equal(c.loss(model, x, y, 0.1)[0], next_a)


@pytest.mark.parametrize("params,msg", [({**PARAMS, "steps": 0}, "steps"), ({**PARAMS, "step": -1}, "step"),
                                        ({**PARAMS, "random_start": "yes"}, "random_start"),
                                        ({**PARAMS, "step": float("inf")}, "step")])
def test_madry_rejects_bad_params(params, msg):
    with pytest.raises(ValueError, match=msg):
        get_method("madry")(params, "mnist", 0)
