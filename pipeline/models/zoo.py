"""The model zoo: the paper's architectures (Wong et al.'s definitions) and CNN7 (Shi et al. 2021).

Every model is a :class:`CertifiedNet`: a fixed input normalisation followed by ``net``, an ``nn.Sequential`` in the
plain layout that published certified models use (``0.weight``, ``0.bias``, ``2.weight`` ... with ``Flatten`` as a
layer), so an external ``state_dict`` loads into ``model.net`` unchanged.  Residual networks use :class:`Residual`
blocks, which compute ``main(x) + shortcut(x)``; that is Wong et al.'s ``Dense(conv_skip, None, conv)`` written as a
block.  Inputs are pixels in [0, 1]; the normalisation is part of the model, so bound domains see the ε-ball in pixel
space and push it through the normalisation like any other affine layer.

Shapes: MNIST models take ``[B, 1, 28, 28]``, CIFAR models ``[B, 3, 32, 32]``; every model returns logits ``[B, 10]``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from pipeline.errors import ConfigError

__all__ = ["Normalize", "Residual", "CertifiedNet", "MODELS", "build_model", "count_parameters", "count_hidden_units",
           "model_dataset"]


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; kept as buffers so checkpoints carry them."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Residual(nn.Module):
    """``main(x) + shortcut(x)``: a residual block without its closing ReLU (that follows as its own layer)."""

    def __init__(self, main: nn.Sequential, shortcut: nn.Sequential):
        super().__init__()
        self.main = main
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.shortcut(x)


class CertifiedNet(nn.Module):
    """Normalisation + ``net`` (plain ``nn.Sequential``); ``dataset`` names the input domain."""

    def __init__(self, net: nn.Sequential, mean: Sequence[float], std: Sequence[float], dataset: str):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.dataset = dataset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def _mnist_fc(widths: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    prev = 784
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, 10))
    return nn.Sequential(*layers)


def mnist_fc1() -> nn.Sequential:
    """MNIST_FC1: 784-512-512-10."""
    return _mnist_fc([512, 512])


def mnist_fc2() -> nn.Sequential:
    """MNIST_FC2: five hidden layers of 2048."""
    return _mnist_fc([2048] * 5)


def mnist_small() -> nn.Sequential:
    """Wong et al.'s ``mnist_model``: conv 16-4-2, conv 32-4-2, fc 100."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))


def _wong_large(in_ch: int, side: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, 32, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=1, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * (side // 4) ** 2, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def mnist_large() -> nn.Sequential:
    """Wong et al.'s ``mnist_model_large``."""
    return _wong_large(1, 28)


def cifar_small() -> nn.Sequential:
    """Wong et al.'s ``cifar_model``: conv 16-4-2, conv 32-4-2, fc 100."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 8 * 8, 100), nn.ReLU(), nn.Linear(100, 10))


def cifar_large() -> nn.Sequential:
    """Wong et al.'s ``cifar_model_large``."""
    return _wong_large(3, 32)


def _res_block(cin: int, cout: int, downsample: bool) -> list[nn.Module]:
    k_first, stride, k_skip = (4, 2, 2) if downsample else (3, 1, 1)
    main = nn.Sequential(nn.Conv2d(cin, cout, k_first, stride=stride, padding=1), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, stride=1, padding=1))
    shortcut = nn.Sequential(nn.Conv2d(cin, cout, k_skip, stride=stride, padding=0))
    return [Residual(main, shortcut), nn.ReLU()]


def cifar_resnet(n: int = 1, factor: int = 1) -> nn.Sequential:
    """Wong et al.'s ``cifar_model_resnet(N=1, factor=1)``: 4,214,850 parameters."""
    layers: list[nn.Module] = [nn.Conv2d(3, 16, 3, stride=1, padding=1), nn.ReLU()]
    layers += _res_block(16, 16 * factor, False)
    for _ in range(n):
        layers += _res_block(16 * factor, 16 * factor, False)
    layers += _res_block(16 * factor, 32 * factor, True)
    for _ in range(n - 1):
        layers += _res_block(32 * factor, 32 * factor, False)
    layers += _res_block(32 * factor, 64 * factor, True)
    for _ in range(n - 1):
        layers += _res_block(64 * factor, 64 * factor, False)
    layers += [nn.Flatten(), nn.Linear(64 * factor * 8 * 8, 1000), nn.ReLU(), nn.Linear(1000, 10)]
    return nn.Sequential(*layers)


def cnn7() -> nn.Sequential:
    """CNN7 of Shi et al. 2021 ("Fast certified robust training"): conv 64-64-128-128-128 with BatchNorm, FC 512."""
    def cbr(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.Sequential(*cbr(3, 64, 1), *cbr(64, 64, 1), *cbr(64, 128, 2), *cbr(128, 128, 1), *cbr(128, 128, 1),
                         nn.Flatten(), nn.Linear(128 * 16 * 16, 512), nn.ReLU(), nn.Linear(512, 10))


#: name -> (dataset, builder of the plain ``nn.Sequential``)
MODELS: dict[str, tuple[str, Callable[[], nn.Sequential]]] = {
    "MNIST_FC1": ("mnist", mnist_fc1),
    "MNIST_FC2": ("mnist", mnist_fc2),
    "MNIST_Small": ("mnist", mnist_small),
    "MNIST_Large": ("mnist", mnist_large),
    "CIFAR_Small": ("cifar10", cifar_small),
    "CIFAR_Large": ("cifar10", cifar_large),
    "CIFAR_Resnet": ("cifar10", cifar_resnet),
    "CNN7": ("cifar10", cnn7),
}


def model_dataset(name: str) -> str:
    """The dataset a zoo model is built for."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    return MODELS[name][0]


def build_model(name: str, mean: Sequence[float], std: Sequence[float]) -> CertifiedNet:
    """Build zoo model ``name`` with the given input normalisation (uses torch's global RNG for init)."""
    dataset = model_dataset(name)
    return CertifiedNet(MODELS[name][1](), mean, std, dataset)


def count_parameters(model: nn.Module, biases: bool = True) -> int:
    """Trainable parameters; ``biases=False`` counts weights only (the paper's convention for the FC nets)."""
    return sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and (biases or not n.endswith("bias")))


def count_hidden_units(model: CertifiedNet, input_shape: Sequence[int]) -> int:
    """Number of ReLU outputs for one input of ``input_shape`` (C, H, W)."""
    total = 0

    def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return total
