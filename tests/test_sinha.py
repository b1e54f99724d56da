"""Sinha et al. WRM: the inner maximisation improves the penalised objective, leaves parameter gradients alone, shrinks
to the clean input as γ grows; ε-free methods are declared consistently in config and registry."""
import pytest
import torch
import torch.nn.functional as F

from pipeline.config import EPS_FREE_METHODS
from pipeline.models import build_model
from pipeline.train import METHODS, get_method
from pipeline.train.sinha import wrm_perturb


def _model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = build_model("MNIST_Small", [0.1307], [0.3081])
    x = torch.rand(6, 1, 28, 28)
    y = torch.randint(0, 10, (6,))
    return model, x, y


def _objective(model, z, x, y, gamma):
    with torch.no_grad():
        ce = F.cross_entropy(model(z), y, reduction="none")
        return ce - gamma * (z - x).flatten(1).pow(2).sum(1)


@pytest.mark.parametrize("gamma", [0.385, 2.0])
def test_wrm_improves_penalised_objective(gamma):
    model, x, y = _model_and_batch()
    z = wrm_perturb(model, x, y, gamma, steps=15)
    assert (_objective(model, z, x, y, gamma) >= _objective(model, x, x, y, gamma) - 1e-6).all()
    assert (_objective(model, z, x, y, gamma).sum() > _objective(model, x, x, y, gamma).sum())
    assert all(p.grad is None for p in model.parameters())
    assert not z.requires_grad


def test_wrm_transport_shrinks_as_gamma_grows():
    model, x, y = _model_and_batch(1)
    dist = [(wrm_perturb(model, x, y, g, 15) - x).flatten(1).norm(dim=1).mean().item() for g in (0.1, 1.0, 100.0)]
    assert dist[0] > dist[1] > dist[2] and dist[2] < 1e-2


def test_sinha_step_trains_on_perturbed_inputs():
    model, x, y = _model_and_batch(2)
    method = get_method("sinha")({"gamma": 0.385, "steps": 3}, "mnist", 0)
    loss, stats = method.loss(model, x, y, eps=0.3)
    loss.backward()
    assert torch.isfinite(loss) and stats["transport_l2"] > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    z_loss = F.cross_entropy(model(x), y)
    assert loss.item() > z_loss.item()  # the adversary found a worse point than the clean one


@pytest.mark.parametrize("params,msg", [({"gamma": 0, "steps": 3}, "gamma"), ({"gamma": 1.0, "steps": -1}, "steps"),
                                        ({"gamma": "a", "steps": 3}, "gamma"),
                                        ({"gamma": float("inf"), "steps": 3}, "gamma"),
                                        ({"gamma": float("nan"), "steps": 3}, "gamma")])
def test_sinha_rejects_bad_params(params, msg):
    with pytest.raises(ValueError, match=msg):
        get_method("sinha")(params, "mnist", 0)


def test_eps_free_methods_match_registry():
    assert set(EPS_FREE_METHODS) == {name for name, cls in METHODS.items() if not cls.uses_eps}
