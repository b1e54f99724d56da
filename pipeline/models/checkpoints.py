"""Loading model weights: our own ``model.pt`` files and external (published) checkpoints.

An external checkpoint is a PyTorch ``state_dict`` of a zoo architecture in the plain ``nn.Sequential`` layout that
published certified models use (``0.weight``, ``0.bias``, ``2.weight`` ... with Flatten as a layer), without the
normalisation, which is given separately (mean/std).  Keys and shapes are checked against the named architecture
and every mismatch is reported in one error.  Loading uses ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from pipeline.errors import CheckpointError
from pipeline.models.zoo import CertifiedNet, build_model
from pipeline.utils.io import load_checkpoint

__all__ = ["load_model", "load_external"]


def _check_state(expected: dict[str, torch.Tensor], got: object, source: Path, arch: str) -> None:
    if not isinstance(got, dict) or not all(isinstance(v, torch.Tensor) for v in got.values()):
        raise CheckpointError(f"{source}: expected a state_dict (mapping of names to tensors) for {arch}")
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(got[k].shape)} vs {arch} {tuple(v.shape)}"
              for k, v in expected.items() if k in got and tuple(got[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{source} does not match architecture {arch}: missing keys {missing}, unexpected "
                              f"keys {unexpected}, shape mismatches {shapes}")


def load_model(name: str, path: Path | str, mean: Sequence[float], std: Sequence[float]) -> CertifiedNet:
    """A zoo model with the full ``state_dict`` saved by the train stage."""
    model = build_model(name, mean, std)
    state = load_checkpoint(path)
    _check_state(model.state_dict(), state, Path(path), name)
    model.load_state_dict(state)
    return model.eval()


def load_external(name: str, path: Path | str, mean: Sequence[float], std: Sequence[float]) -> CertifiedNet:
    """A zoo model whose ``net`` takes a published plain-``Sequential`` state_dict; normalisation given here."""
    model = build_model(name, mean, std)
    state = load_checkpoint(path)
    _check_state(model.net.state_dict(), state, Path(path), name)
    model.net.load_state_dict(state)
    return model.eval()
