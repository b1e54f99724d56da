"""Loading model weights: our own ``model.pt`` files and external (published) checkpoints.

An external checkpoint is a PyTorch ``state_dict`` of a zoo architecture in the plain ``nn.Sequential`` layout that
published certified models use (``0.weight``, ``0.bias``, ``2.weight`` ... with Flatten as a layer), without the
normalisation, which is given separately (mean/std).  It may also be wrapped as ``{'state_dict': <state_dict>, ...}``
or, as Wong et al.'s cascades are released, ``{'state_dict': [stage0, stage1, ...], ...}``: ``stage`` picks one model
of such a cascade.  Keys and shapes are checked against the named architecture and every mismatch is reported in one
error; anything else gets an error saying what the file holds.  Loading uses ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

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


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items())


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        parts = [f"{k!r}: {type(v).__name__}" + (f" of {len(v)}" if isinstance(v, (list, tuple, dict)) else "")
                 for k, v in list(obj.items())[:12]]
        return f"a dict with keys {{{', '.join(parts)}{', ...' if len(obj) > 12 else ''}}}"
    return f"a {type(obj).__name__}" + (f" of {len(obj)}" if isinstance(obj, (list, tuple)) else "")


def external_state(obj: Any, source: Path, stage: int | None = None) -> dict[str, torch.Tensor]:
    """The state_dict inside a loaded external checkpoint: the object itself, its ``'state_dict'`` entry, or stage
    ``stage`` of a cascade (a list of state_dicts, as a bare list or under ``'state_dict'``)."""
    inner = obj["state_dict"] if isinstance(obj, dict) and "state_dict" in obj else obj
    if isinstance(inner, (list, tuple)) and inner and all(_is_state_dict(s) for s in inner):
        if stage is None:
            raise CheckpointError(f"{source} holds a cascade of {len(inner)} models ({_describe(obj)}); pick one "
                                  f"with checkpoint.stage: <0..{len(inner) - 1}> in params.yaml (run id "
                                  f"external-{source.stem}-stage<N>-<model>-eps<ε>)")
        if not 0 <= stage < len(inner):
            raise CheckpointError(f"{source}: checkpoint.stage {stage} out of range; the cascade has {len(inner)} "
                                  f"models (0..{len(inner) - 1})")
        return inner[stage]
    if _is_state_dict(inner):
        if stage is not None:
            raise CheckpointError(f"{source}: checkpoint.stage {stage} given, but the file holds one model, not a "
                                  "cascade; remove checkpoint.stage")
        return inner
    raise CheckpointError(f"{source}: expected a state_dict (a mapping of parameter names to tensors), optionally "
                          f"under 'state_dict' or as a list of them (a cascade, with checkpoint.stage); found "
                          f"{_describe(obj)}")


def load_external(name: str, path: Path | str, mean: Sequence[float], std: Sequence[float],
                  stage: int | None = None) -> CertifiedNet:
    """A zoo model whose ``net`` takes a published plain-``Sequential`` state_dict; normalisation given here;
    ``stage`` picks one model of a cascade checkpoint."""
    model = build_model(name, mean, std)
    state = external_state(load_checkpoint(path), Path(path), stage)
    _check_state(model.net.state_dict(), state, Path(path), name)
    model.net.load_state_dict(state)
    return model.eval()
