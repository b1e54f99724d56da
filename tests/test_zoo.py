"""Model zoo: exact parameter and hidden-unit counts (the paper's, Wong et al.'s and Shi et al.'s definitions)."""
import pytest
import torch

from pipeline.errors import CheckpointError, ConfigError
from pipeline.models import MODELS, build_model, count_hidden_units, count_parameters, load_external, load_model

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
# FC nets counted without biases, as the paper does; the others with biases.
PARAMS = {"MNIST_FC1": (668_672, False), "MNIST_FC2": (18_403_328, False), "MNIST_Small": (166_406, True),
          "MNIST_Large": (1_974_762, True), "CIFAR_Small": (214_918, True), "CIFAR_Large": (2_466_858, True),
          "CIFAR_Resnet": (4_214_850, True), "CNN7": (17_191_626, True)}
# Hidden units (ReLU outputs). The paper prints 28,064 for MNIST_Large: a typo; its layers give 48,064.
HIDDEN = {"MNIST_Small": 4_804, "MNIST_Large": 48_064, "CIFAR_Small": 6_244, "CIFAR_Large": 62_464,
          "CIFAR_Resnet": 107_496}


def _build(name):
    ch = SHAPES[MODELS[name][0]][0]
    return build_model(name, [0.5] * ch, [0.25] * ch)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_counts(name):
    count, biases = PARAMS[name]
    assert count_parameters(_build(name), biases=biases) == count


@pytest.mark.parametrize("name", sorted(HIDDEN))
def test_hidden_units(name):
    assert count_hidden_units(_build(name), SHAPES[MODELS[name][0]]) == HIDDEN[name]


def test_outputs_ten_logits():
    for name in ("MNIST_Small", "CIFAR_Resnet"):
        m = _build(name).eval()
        assert m(torch.rand(2, *SHAPES[MODELS[name][0]])).shape == (2, 10)


def test_unknown_model():
    with pytest.raises(ConfigError, match="unknown model 'MNIST_Tiny'"):
        build_model("MNIST_Tiny", [0.0], [1.0])


def test_external_checkpoint_plain_sequential_layout(tmp_path):
    src = _build("MNIST_Small")
    path = tmp_path / "published.pth"
    torch.save(src.net.state_dict(), path)
    assert sorted(src.net.state_dict())[:2] == ["0.bias", "0.weight"]
    model = load_external("MNIST_Small", path, [0.0], [1.0])
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(model(x), src.net(x))


def test_external_checkpoint_mismatch_names_keys_and_shapes(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save(_build("CIFAR_Small").net.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"does not match architecture MNIST_Small.*0\.weight"):
        load_external("MNIST_Small", path, [0.0], [1.0])


def test_checkpoint_with_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": object()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_model("MNIST_Small", path, [0.0], [1.0])
