"""Fused kernels for bound propagation in *training*: ``torch.compile`` (inductor) of the elementwise chains that
eager PyTorch runs as many full-size passes, each with its own temporaries for autograd.

Today one kernel: the backward (CROWN-style) pass through a ReLU, :func:`relu_back`.  On MNIST_Small at batch 50
its eager form (``where`` + ``mul`` + ``clamp`` + a batched dot product, and their autograd) was the largest single
cost of a CROWN-IBP step (docs/performance.md); compiled, the forward and its backward each become one loop.

Off by default and only inside :func:`compiled_kernels` (the trainer enters it when params.yaml's
``compile_bounds`` is true).  Verification never uses it: :func:`pipeline.bounds.verify` runs its bounds under
:func:`eager_kernels`, so every certificate comes from the eager kernels whose float rounding the verifier's
guard models (pipeline/bounds/rounding.py).  The compiled kernel's result equals the eager one's coefficients bit
for bit and its constant term up to float summation order (a training loss, not a certificate).

If compilation fails (no C compiler, an unsupported platform) the first call says why on stderr and the eager
kernel is used from then on.
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import torch

__all__ = ["batched_dot", "relu_back", "relu_back_kernel", "compiled_kernels", "eager_kernels", "compiled_enabled"]

_enabled = False
_compiled: Callable | None = None
_failed = False


def batched_dot(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum_i a[b, m, i] v[b, i]`` ``[B, m]`` for ``a`` ``[B, m, *shape]`` and ``v`` ``[B, *shape]`` (a batched
    product: no ``[B, m, *shape]`` temporary)."""
    return torch.bmm(a.flatten(2), v.flatten(1)[:, :, None])[:, :, 0]


def relu_back(a: torch.Tensor, lower_slope: torch.Tensor, upper_slope: torch.Tensor,
              upper_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Back-substitute ``a`` ``[B, m, *shape]`` through a ReLU relaxed by lines with zero lower intercept
    (``[B, *shape]`` each): the lower line where ``a >= 0``, the upper one where ``a < 0``.  Returns the
    coefficients on the ReLU's input ``[B, m, *shape]`` and the constant ``sum_i min(a_i, 0) * upper_bias_i``
    ``[B, m]``."""
    a_in = a * torch.where(a >= 0, lower_slope[:, None], upper_slope[:, None])
    return a_in, batched_dot(a.clamp_max(0), upper_bias)


def _compiled_relu_back(a, lower_slope, upper_slope, upper_bias):
    global _compiled, _failed
    if _compiled is None:
        _compiled = torch.compile(relu_back, dynamic=False)
    try:
        return _compiled(a, lower_slope, upper_slope, upper_bias)
    except Exception as e:  # noqa: BLE001 - any compiler failure: fall back, say so once
        _failed = True
        print(f"pipeline.bounds.kernels: torch.compile failed ({type(e).__name__}: {str(e)[:200]}); "
              "using the eager kernels", file=sys.stderr)
        return relu_back(a, lower_slope, upper_slope, upper_bias)


def compiled_enabled() -> bool:
    return _enabled and not _failed


def relu_back_kernel() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The kernel to use now: compiled inside :func:`compiled_kernels`, else the eager :func:`relu_back`."""
    return _compiled_relu_back if compiled_enabled() else relu_back


@contextlib.contextmanager
def _kernels(enabled: bool) -> Iterator[None]:
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


def compiled_kernels(enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """Use the compiled kernels inside this block (``enabled=False``: a no-op block, for call sites with a flag)."""
    return _kernels(enabled) if enabled else contextlib.nullcontext()


def eager_kernels() -> contextlib.AbstractContextManager[None]:
    """The eager kernels inside this block, whatever an enclosing block chose (verification uses it)."""
    return _kernels(False)
