"""A network as a list of primitive ops that every bound domain understands.

``to_ops(model)`` flattens a :class:`~pipeline.models.CertifiedNet` (or a plain ``nn.Sequential``) into ops:
:class:`Linear`, :class:`Conv`, :class:`ChannelAffine` (input normalisation and BatchNorm in eval mode),
:class:`Flatten`, :class:`ReLU` and :class:`Residual` (``main + shortcut``).  Ops hold the model's own tensors
(cast to the requested dtype, which keeps the autograd graph), so gradients flow from bounds into the weights.

:func:`fold_spec` folds a per-sample specification matrix ``C`` ``[B, m, 10]`` into the last linear layer, so domains
bound ``C @ logits`` (the margins ``z_y - z_j``) directly; this is tighter than bounding the logits and subtracting.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Union

import torch
from torch import nn

from pipeline.errors import UnsupportedLayerError
from pipeline.models.zoo import CertifiedNet, Normalize, Residual as ResidualModule

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.bounds.base import Domain

__all__ = ["Linear", "Conv", "ChannelAffine", "Flatten", "ReLU", "Residual", "Op", "to_ops", "fold_spec",
           "propagate"]


@dataclass(frozen=True)
class Linear:
    """``y = W x + b``; ``weight`` is ``[out, in]`` or per sample ``[B, out, in]`` (a folded spec)."""
    weight: torch.Tensor
    bias: torch.Tensor | None

    def apply(self, state: "Domain") -> "Domain":
        return state.linear(self.weight, self.bias)


@dataclass(frozen=True)
class Conv:
    """2-D convolution with ``weight`` ``[Cout, Cin, k, k]``."""
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: tuple[int, int]
    padding: tuple[int, int]

    def apply(self, state: "Domain") -> "Domain":
        return state.conv(self.weight, self.bias, self.stride, self.padding)


@dataclass(frozen=True)
class ChannelAffine:
    """Elementwise ``y = x * scale + shift``; ``scale``/``shift`` broadcast against one sample's shape."""
    scale: torch.Tensor
    shift: torch.Tensor

    def apply(self, state: "Domain") -> "Domain":
        return state.affine(self.scale, self.shift)


@dataclass(frozen=True)
class Flatten:
    def apply(self, state: "Domain") -> "Domain":
        return state.flatten()


@dataclass(frozen=True)
class ReLU:
    def apply(self, state: "Domain") -> "Domain":
        return state.relu()


@dataclass(frozen=True)
class Residual:
    """``main(x) + shortcut(x)``."""
    main: tuple["Op", ...]
    shortcut: tuple["Op", ...]

    def apply(self, state: "Domain", observe: "Callable[[Op, Domain], None] | None" = None) -> "Domain":
        return propagate(self.main, state, observe).add(propagate(self.shortcut, state, observe))


Op = Union[Linear, Conv, ChannelAffine, Flatten, ReLU, Residual]


def propagate(ops: tuple[Op, ...] | list[Op], state: "Domain",
              observe: Callable[[Op, "Domain"], None] | None = None) -> "Domain":
    """Push ``state`` through ``ops`` in order (the one propagation loop every domain shares).  ``observe(op,
    state)``, if given, sees the state entering each op, those inside residual blocks included (each branch in turn,
    main then shortcut): e.g. the pre-activation bounds of every ReLU, for a regulariser.  The same operations in
    the same order either way, so observing never changes a bound."""
    for op in ops:
        if observe is not None:
            observe(op, state)
        state = op.apply(state, observe) if isinstance(op, Residual) else op.apply(state)
    return state


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _bn_affine(bn: nn.modules.batchnorm._BatchNorm, dtype: torch.dtype, spatial: bool) -> ChannelAffine:
    if bn.training or bn.running_mean is None:
        raise UnsupportedLayerError(f"{bn.__class__.__name__} must be in eval mode with running statistics to be "
                                    "bounded (call model.eval())")
    var = bn.running_var.to(dtype)
    scale = (bn.weight.to(dtype) if bn.affine else torch.ones_like(var)) / torch.sqrt(var + bn.eps)
    shift = (bn.bias.to(dtype) if bn.affine else torch.zeros_like(var)) - bn.running_mean.to(dtype) * scale
    view = (-1, 1, 1) if spatial else (-1,)
    return ChannelAffine(scale.view(view), shift.view(view))


def _module_ops(module: nn.Module, dtype: torch.dtype) -> list[Op]:
    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dtype)

    if isinstance(module, nn.Sequential):
        return [op for child in module for op in _module_ops(child, dtype)]
    if isinstance(module, nn.Linear):
        return [Linear(cast(module.weight), cast(module.bias))]
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or _pair(module.dilation) != (1, 1) or module.padding_mode != "zeros" \
                or isinstance(module.padding, str):
            raise UnsupportedLayerError(f"Conv2d with groups/dilation/padding mode is not supported: {module}")
        return [Conv(cast(module.weight), cast(module.bias), _pair(module.stride), _pair(module.padding))]
    if isinstance(module, nn.ReLU):
        return [ReLU()]
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            raise UnsupportedLayerError(f"Flatten must flatten all non-batch dims: {module}")
        return [Flatten()]
    if isinstance(module, nn.BatchNorm2d):
        return [_bn_affine(module, dtype, spatial=True)]
    if isinstance(module, nn.BatchNorm1d):
        return [_bn_affine(module, dtype, spatial=False)]
    if isinstance(module, Normalize):
        scale = (1.0 / module.std.to(dtype))[0]
        return [ChannelAffine(scale, (-module.mean.to(dtype) * scale[None])[0])]
    if isinstance(module, ResidualModule):
        return [Residual(tuple(_module_ops(module.main, dtype)), tuple(_module_ops(module.shortcut, dtype)))]
    if isinstance(module, CertifiedNet):
        return _module_ops(module.normalize, dtype) + _module_ops(module.net, dtype)
    raise UnsupportedLayerError(f"layer {module.__class__.__name__} is not supported by the bound engine "
                                "(supported: Linear, Conv2d, ReLU, Flatten, BatchNorm1d/2d (eval), Normalize, "
                                "Residual)")


def to_ops(model: nn.Module, dtype: torch.dtype = torch.float32) -> list[Op]:
    """The op list of ``model`` with its tensors cast to ``dtype`` (gradients still flow to the parameters)."""
    return _module_ops(model, dtype)


def fold_spec(ops: list[Op], spec: torch.Tensor) -> list[Op]:
    """Fold ``spec`` ``[B, m, n_out]`` into the last op: bounds are then on ``spec @ logits`` ``[B, m]``."""
    spec = spec.to(_dtype_of(ops))
    last = ops[-1] if ops else None
    if isinstance(last, Linear) and last.weight.dim() == 2:
        weight = torch.einsum("bmo,oi->bmi", spec, last.weight)
        bias = None if last.bias is None else torch.einsum("bmo,o->bm", spec, last.bias)
        return ops[:-1] + [replace(last, weight=weight, bias=bias)]
    return ops + [Linear(spec, None)]


def _dtype_of(ops: list[Op]) -> torch.dtype:
    for op in ops:
        if isinstance(op, (Linear, Conv)):
            return op.weight.dtype
        if isinstance(op, ChannelAffine):
            return op.scale.dtype
        if isinstance(op, Residual):
            return _dtype_of(list(op.main))
    return torch.float32
