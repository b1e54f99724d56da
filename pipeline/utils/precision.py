"""Mixed precision for the parts of training and attacks where it cannot touch a certificate.

``mixed_precision: true`` (params.yaml) runs the *natural* forward passes of training and the generation of
adversarial examples (Madry's PGD, Sinha's WRM ascent, the evaluation attacks' ``perturb``) under bfloat16 autocast.
It never covers sound bounds (the verified/robust losses of training, VRA), the clean and re-check forwards of an
attack (success is decided in float32), or validation accuracy.  Logits leave autocast as float32, so every loss
computed on them runs in float32.  bfloat16 has float32's exponent range, so no loss scaling is needed.

Autocast does not touch float64 tensors, and nothing here changes a module's parameters (they stay float32).
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterator

import torch
from torch import nn

__all__ = ["autocast", "full_precision", "mixed_forward"]


def _device_type(device: torch.device | str) -> str:
    return device.type if isinstance(device, torch.device) else torch.device(device).type


def autocast(device: torch.device | str, enabled: bool) -> ContextManager[Any]:
    """bfloat16 autocast on ``device``'s type (``cpu`` or ``cuda``) when ``enabled``, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    kind = _device_type(device)
    if kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise RuntimeError("mixed_precision: true needs bfloat16 support, which this CUDA device lacks; "
                           "set mixed_precision: false in params.yaml")
    return torch.autocast(device_type=kind, dtype=torch.bfloat16, enabled=True)


def full_precision(device: torch.device | str) -> ContextManager[Any]:
    """Autocast switched off on ``device``'s type, even inside an enclosing autocast region."""
    return torch.autocast(device_type=_device_type(device), enabled=False)


def _float32_output(module: nn.Module, inputs: Any, output: Any) -> Any:
    if isinstance(output, torch.Tensor) and output.is_floating_point() and output.dtype != torch.float32 \
            and output.dtype != torch.float64:
        return output.float()
    return None  # unchanged


@contextlib.contextmanager
def mixed_forward(model: nn.Module, device: torch.device | str, enabled: bool) -> Iterator[None]:
    """Inside: ``model``'s forward passes run under bfloat16 autocast and its outputs (logits) come back as float32,
    for code that calls the model and computes a loss on the logits itself (e.g. :func:`pipeline.attacks.pgd_perturb`).
    A no-op when not ``enabled``."""
    if not enabled:
        yield
        return
    handle = model.register_forward_hook(_float32_output)
    try:
        with autocast(device, True):
            yield
    finally:
        handle.remove()
