"""Receptive-field ("window") storage for the coefficient rows of symbolic equations over an image input.

A neuron of a convolutional layer depends on a small window of the input only: its receptive field.  The dense form
of :mod:`pipeline.bounds.symbolic` stores, per neuron, one coefficient for every input pixel (``d`` = 784 on MNIST,
3,072 on CIFAR), almost all of them zero: after MNIST_Small's first convolution 16 of 784 are non-zero, after the
second 100.  :class:`PatchCoef` stores only the window, so a convolution costs ``K^2 * C_in * C_out * window`` per
output location instead of ``K^2 * C_in * C_out * d``, and the first linear layer after the convolutions contracts
windows instead of whole images.  The equations, and so every bound, are the same as the dense form's (only the
order of float additions differs); ``tests/test_bounds_patches.py`` checks both forms against each other.

Layout.  ``data`` is ``[B, C, H, W, Q]`` for a layer of ``C x H x W`` neurons, ``Q = c0 * ph * pw`` coefficients per
neuron over input channels ``c0`` and a ``ph x pw`` window.  The window of neuron ``(h, w)`` starts at input pixel
``(off_h + t_h * h, off_w + t_w * w)``; ``t`` is the product of the strides so far.  Window positions outside the
image always hold 0 (zero padding is a constant, not an input variable).

A convolution (``K x K``, stride ``S``, padding ``p``) is an unfold of the neuron grid (gather the ``K^2`` neighbours
of each output location), a contraction over input channels with the kernel, and a fold that places the ``K^2``
windows, shifted by ``t`` pixels each, into the output's larger window (``p' = p + (K - 1) t``, ``t' = t S``).  A
linear layer after ``Flatten`` contracts each location's windows with its weight columns and folds them into the
image: the result is the dense form ``[B, d, out]``, which the following layers use.  Once a window is no smaller
than the image, the rows switch to the dense form too.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["PatchCoef", "flatten_rows", "scale_rows", "spread", "conv_rows", "linear_rows"]

Pair = tuple[int, int]


class PatchCoef:
    """Coefficient rows of per-neuron linear equations over an image input, stored over receptive fields."""

    __slots__ = ("data", "patch", "stride", "offset", "in_shape", "flat")

    def __init__(self, data: torch.Tensor, patch: Pair, stride: Pair, offset: Pair, in_shape: tuple[int, int, int],
                 flat: bool = False):
        self.data = data            # [B, C, H, W, c0 * ph * pw]
        self.patch = patch          # window size (ph, pw)
        self.stride = stride        # accumulated stride (t_h, t_w)
        self.offset = offset        # input pixel of neuron (0, 0)'s window corner
        self.in_shape = in_shape    # (c0, H0, W0) of the input image
        self.flat = flat            # after Flatten: neurons are indexed c * H * W + h * W + w

    @classmethod
    def from_radius(cls, radius: torch.Tensor) -> "PatchCoef":
        """The identity ``x = c + r * t`` over an image box: ``radius`` is ``[B, C, H, W]``."""
        _, c, h, w = radius.shape
        data = torch.diag_embed(radius.permute(0, 2, 3, 1)).permute(0, 3, 1, 2, 4)  # [B, C, H, W, c0 = C]
        return cls(data, (1, 1), (1, 1), (0, 0), (c, h, w))

    def _like(self, data: torch.Tensor, flat: bool | None = None) -> "PatchCoef":
        return PatchCoef(data, self.patch, self.stride, self.offset, self.in_shape,
                         self.flat if flat is None else flat)

    @property
    def grid(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the neuron grid."""
        return tuple(self.data.shape[1:4])  # type: ignore[return-value]

    @property
    def neuron_shape(self) -> tuple[int, ...]:
        c, h, w = self.grid
        return (c * h * w,) if self.flat else (c, h, w)

    @property
    def input_dim(self) -> int:
        return math.prod(self.in_shape)

    def compact(self) -> bool:
        """Whether the window form is smaller than the dense form (else dense is as cheap and simpler)."""
        return self.data.shape[-1] < self.input_dim

    # ------------------------------------------------------------------------------------------------- arithmetic
    def _per_neuron(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` (broadcastable to ``[B, *neuron_shape]``) as a factor of ``data``."""
        if self.flat and t.dim() >= 1:  # the last dim indexes the flattened neurons (or broadcasts over them)
            t = t.reshape(*t.shape[:-1], *(self.grid if t.shape[-1] == math.prod(self.grid) else (1, 1, 1)))
        return t.unsqueeze(-1)

    def __mul__(self, t: torch.Tensor | float) -> "PatchCoef":
        return self._like(self.data * (t if isinstance(t, (int, float)) else self._per_neuron(t)))

    __rmul__ = __mul__

    def __truediv__(self, v: float) -> "PatchCoef":
        return self._like(self.data / v)

    def __neg__(self) -> "PatchCoef":
        return self._like(-self.data)

    def _aligned(self, other: "PatchCoef") -> tuple["PatchCoef", "PatchCoef"] | None:
        """Both operands over one common window (padding the smaller), or ``None`` if the grids differ."""
        if (self.stride, self.in_shape, self.flat, self.grid) != (other.stride, other.in_shape, other.flat,
                                                                   other.grid):
            return None
        if (self.patch, self.offset) == (other.patch, other.offset):
            return self, other
        lo = [min(a, b) for a, b in zip(self.offset, other.offset)]
        hi = [max(a + p, b + q) for a, b, p, q in zip(self.offset, other.offset, self.patch, other.patch)]
        return self._widen(lo, hi), other._widen(lo, hi)

    def _widen(self, lo: list[int], hi: list[int]) -> "PatchCoef":
        b, c, h, w, _ = self.data.shape
        window = self.data.reshape(b * c * h * w, self.in_shape[0], *self.patch)
        (oh, ow), (ph, pw) = self.offset, self.patch
        window = F.pad(window, (ow - lo[1], hi[1] - ow - pw, oh - lo[0], hi[0] - oh - ph))
        return PatchCoef(window.reshape(b, c, h, w, -1), (hi[0] - lo[0], hi[1] - lo[1]), self.stride,
                         (lo[0], lo[1]), self.in_shape, self.flat)

    def _combine(self, other, sign: float):
        pair = self._aligned(other) if isinstance(other, PatchCoef) else None
        if pair is not None:
            a, b = pair
            return a._like(a.data + b.data if sign > 0 else a.data - b.data)
        dense = other.to_dense() if isinstance(other, PatchCoef) else other
        return self.to_dense() + dense if sign > 0 else self.to_dense() - dense

    def __add__(self, other):
        return self._combine(other, 1.0)

    def __sub__(self, other):
        return self._combine(other, -1.0)

    def __radd__(self, other):
        return self._combine(other, 1.0)

    def __rsub__(self, other):
        return -self._combine(other, -1.0)

    def abs_sum(self) -> torch.Tensor:
        """``sum_i |a_i|`` per neuron, ``[B, *neuron_shape]``."""
        s = self.data.abs().sum(-1)
        return s.flatten(1) if self.flat else s

    def flatten(self) -> "PatchCoef":
        return self._like(self.data, flat=True)

    # ------------------------------------------------------------------------------------------------- layers
    def conv(self, weight: torch.Tensor, stride: Pair, padding: Pair) -> "PatchCoef":
        """Through a bias-free convolution ``weight`` ``[C', C, kh, kw]``."""
        if self.flat:
            raise ValueError("a convolution cannot follow Flatten")
        b, c, h, w, q = self.data.shape
        o, _, kh, kw = weight.shape
        padded = F.pad(self.data, (0, 0, padding[1], padding[1], padding[0], padding[0]))
        cols = padded.unfold(2, kh, stride[0]).unfold(3, kw, stride[1])              # [B, C, H', W', Q, kh, kw]
        h2, w2 = cols.shape[2:4]
        # rows: (window entry q, kernel position); columns: (sample, output channel, output location)
        mixed = torch.einsum("bchwqij,ocij->qijbohw", cols, weight).reshape(q * kh * kw, b * o * h2 * w2)
        (ph, pw), (th, tw) = self.patch, self.stride
        new_patch = (ph + (kh - 1) * th, pw + (kw - 1) * tw)
        if new_patch == (kh, kw):  # single-pixel windows, unit stride so far: (c0, i, j) is the new window's entry
            placed = mixed
        else:
            index = _window_index(self.in_shape[0], (ph, pw), (kh, kw), (th, tw), new_patch).to(mixed.device)
            placed = _place(mixed, index,
                            self.in_shape[0] * new_patch[0] * new_patch[1])
        data = placed.view(-1, b, o, h2, w2).permute(1, 2, 3, 4, 0).contiguous()  # window entries innermost
        return PatchCoef(data, new_patch, (th * stride[0], tw * stride[1]),
                         (self.offset[0] - padding[0] * th, self.offset[1] - padding[1] * tw), self.in_shape)

    def _pixel_index(self) -> torch.Tensor:
        """Flat input pixel (``c0 * H0 * W0`` for positions outside the image) of every (window entry, location),
        ``[Q * H * W]`` in that order."""
        _, h, w = self.grid
        c0, h0, w0 = self.in_shape
        (ph, pw), (th, tw), (oh, ow) = self.patch, self.stride, self.offset
        dev = self.data.device
        r = oh + torch.arange(ph, device=dev)[:, None, None, None] + th * torch.arange(h, device=dev)[None, None, :, None]
        s = ow + torch.arange(pw, device=dev)[None, :, None, None] + tw * torch.arange(w, device=dev)[None, None, None, :]
        inside = (r >= 0) & (r < h0) & (s >= 0) & (s < w0)                          # [ph, pw, H, W]
        pix = torch.where(inside, r * w0 + s, -1)
        ch = torch.arange(c0, device=dev).view(c0, 1, 1, 1, 1) * (h0 * w0)
        idx = torch.where(pix[None] >= 0, ch + pix[None], c0 * h0 * w0)             # [c0, ph, pw, H, W]
        return idx.reshape(-1)

    def linear(self, weight: torch.Tensor) -> torch.Tensor:
        """Through ``weight`` ``[O, N]`` (or per sample ``[B, O, N]``) after Flatten: dense rows ``[B, d, O]``."""
        b, c, h, w, q = self.data.shape
        if weight.dim() == 2:
            per_loc = torch.einsum("bchwq,ochw->qhwbo", self.data, weight.reshape(-1, c, h, w))
        else:
            per_loc = torch.einsum("bchwq,bochw->qhwbo", self.data, weight.reshape(b, -1, c, h, w))
        o = per_loc.shape[-1]
        img = _place(per_loc.reshape(q * h * w, b * o), self._pixel_index(), self.input_dim + 1)[:-1]
        return img.view(-1, b, o).permute(1, 0, 2)

    def to_dense(self) -> torch.Tensor:
        """The dense form ``[B, d, *neuron_shape]`` (each window scattered to its pixels)."""
        b, c, h, w, q = self.data.shape
        c0, h0, w0 = self.in_shape
        (ph, pw), (th, tw), (oh, ow) = self.patch, self.stride, self.offset
        dev = self.data.device
        rows = oh + th * torch.arange(h, device=dev)[:, None] + torch.arange(ph, device=dev)[None]      # [H, ph]
        cols = ow + tw * torch.arange(w, device=dev)[:, None] + torch.arange(pw, device=dev)[None]      # [W, pw]
        r = rows[:, None, None, :, None]                                                             # [H,1,1,ph,1]
        s = cols[None, :, None, None, :]                                                             # [1,W,1,1,pw]
        ch = torch.arange(c0, device=dev)[None, None, :, None, None]                                 # [1,1,c0,1,1]
        inside = (r >= 0) & (r < h0) & (s >= 0) & (s < w0)
        idx = torch.where(inside, (ch * h0 + r) * w0 + s, c0 * h0 * w0)                               # [H,W,c0,ph,pw]
        idx = idx.reshape(1, 1, h, w, q).expand(b, c, h, w, q)
        dense = self.data.new_zeros(b, c, h, w, c0 * h0 * w0 + 1).scatter_add(-1, idx, self.data)[..., :-1]
        return dense.reshape(b, c * h * w, -1).transpose(1, 2).reshape(b, c0 * h0 * w0, *self.neuron_shape)


def _place(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """``out[index[m]] += src[m]`` over rows: ``src`` ``[M, N]``, ``index`` ``[M]`` -> ``[size, N]`` (the
    gradient is a row gather; fold/unfold's CPU kernels are far slower on many small images)."""
    return src.new_zeros(size, src.shape[1]).index_add(0, index, src)


def _window_index(c0: int, patch: Pair, kernel: Pair, stride: Pair, new_patch: Pair) -> torch.Tensor:
    """Position in the new ``c0 x new_patch`` window of every (c0, i, j, ki, kj): window entry (i, j) of the
    neighbour at kernel offset (ki, kj), shifted by ``ki * t_h, kj * t_w``."""
    (ph, pw), (kh, kw), (th, tw), (nh, nw) = patch, kernel, stride, new_patch
    r = torch.arange(ph)[:, None, None, None] + th * torch.arange(kh)[None, None, :, None]
    s = torch.arange(pw)[None, :, None, None] + tw * torch.arange(kw)[None, None, None, :]
    pos = r * nw + s                                                                    # [ph, pw, kh, kw]
    return (torch.arange(c0).view(c0, 1, 1, 1, 1) * (nh * nw) + pos[None]).reshape(-1)


# ------------------------------------------------------------------------------------------------ dispatch helpers
# Domains store coefficient rows either dense (``[B, d, *shape]``) or as PatchCoef; these apply one operation to both.

def flatten_rows(rows):
    return rows.flatten() if isinstance(rows, PatchCoef) else rows.flatten(2)


def scale_rows(rows, s: torch.Tensor):
    """Multiply each neuron's row by ``s`` ``[B, *shape]``."""
    return rows * s if isinstance(rows, PatchCoef) else rows * s[:, None]


def spread(rows) -> torch.Tensor:
    """``sum_i |a_i|`` per neuron, ``[B, *shape]``."""
    return rows.abs_sum() if isinstance(rows, PatchCoef) else rows.abs().sum(1)


def conv_rows(rows: PatchCoef, weight: torch.Tensor, stride: Pair, padding: Pair):
    """Window form through a convolution; dense once the window is no smaller than the image."""
    out = rows.conv(weight, stride, padding)
    return out if out.compact() else out.to_dense()


def linear_rows(rows: PatchCoef, weight: torch.Tensor) -> torch.Tensor:
    if not rows.flat:
        raise ValueError("a linear layer needs a flattened input")
    return rows.linear(weight)
