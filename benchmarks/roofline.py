"""What one step must do and what this machine does per second: the shared counting of bench_floor.py and bench_mixtrain.py.

:class:`OpTally` records, below autograd (so the backward's kernels count too), every aten op a step runs: its FLOPs
(the formulas of ``torch.utils.flop_counter``: matmuls, convolutions, batched products; elementwise ops count 0), the
bytes it reads and writes (its tensor arguments and results, once each; views and other aliasing results move none),
and the number of ops.  :func:`machine_rates` measures, in the same process and thread setting, the matmul and
convolution peak, the in-cache memory bandwidth of an elementwise op (the marginal rate between two cache-resident
sizes), and the fixed cost of one eager op (a chain of
tiny ops with autograd, forward and backward, divided by the ops it dispatched).

Two floors follow (:meth:`OpTally.floors`):

- ``flop_floor_s``: FLOPs / matmul peak, the floor of the *computation* (what an ideal, fully fused implementation
  could approach);
- ``eager_floor_s``: the sum over the step's ops of ``max(flops / peak, bytes / bandwidth, op cost)``, the floor of
  *this op sequence* run eagerly: each op at the better of its compute or in-cache memory rate, and never below the
  measured fixed cost of one op.  Between the two lies what fusing ops (fewer, larger kernels) could gain.

The bandwidth is measured in cache (working sets of 192–768 KiB; the steps' tensors average ~0.2 MB per op), which
is faster than DRAM, so the byte term is optimistic, as a floor must be; taking the max of the three terms per op
rather than their sum is optimistic too.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["OpTally", "machine_rates", "median_time"]

_FLOP_FORMULAS = FlopCounterMode(display=False).flop_registry


def median_time(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _aliases(func) -> bool:
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


def _nbytes(values) -> int:
    return sum(v.numel() * v.element_size() for v in tree_flatten(values)[0] if isinstance(v, torch.Tensor))


class OpTally(TorchDispatchMode):
    """Per aten op: (name, flops, bytes).  Use as a context manager around one step."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = _FLOP_FORMULAS.get(func._overloadpacket)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        moved = 0 if _aliases(func) else _nbytes((args, kwargs)) + _nbytes(out)
        self.ops.append((str(func._overloadpacket), flops, moved))
        return out

    @property
    def flops(self) -> int:
        return sum(f for _, f, _ in self.ops)

    @property
    def bytes(self) -> int:
        return sum(b for _, _, b in self.ops)

    def floors(self, rates: dict[str, float]) -> dict[str, float]:
        peak, bw, op_s = rates["matmul_gflops"] * 1e9, rates["bandwidth_gbs"] * 1e9, rates["op_us"] * 1e-6
        return {"flop_floor_s": self.flops / peak,
                "eager_floor_s": sum(max(f / peak, b / bw, op_s) for _, f, b in self.ops)}


def tally(step) -> OpTally:
    with OpTally() as t:
        step()
    return t


def machine_rates(reps: int) -> dict[str, float]:
    """matmul and conv GFLOP/s, in-cache bandwidth GB/s of ``c = a + b``, and µs per eager op (forward + backward)."""
    a, b = torch.rand(2048, 2048), torch.rand(2048, 2048)
    mm = 2 * 2048 ** 3 / median_time(lambda: a @ b, reps) / 1e9
    x, w = torch.rand(64, 64, 32, 32), torch.rand(64, 64, 3, 3)
    conv = 2 * 64 * 64 * 64 * 9 * 32 * 32 / median_time(lambda: F.conv2d(x, w, padding=1), reps) / 1e9

    def adds(n: int):
        u, v, out = torch.rand(n), torch.rand(n), torch.empty(n)

        def run():
            for _ in range(200):
                torch.add(u, v, out=out)
        return median_time(run, reps) / 200
    # marginal rate between two cache-resident sizes (working sets 192 KiB and 768 KiB), so the fixed cost of the
    # op is not counted as transfer time
    small, large = 1 << 14, 1 << 16
    bandwidth = 3 * 4 * (large - small) / max(adds(large) - adds(small), 1e-9) / 1e9
    leaf = torch.rand(16, requires_grad=True)

    def chain():
        y = leaf
        for _ in range(100):
            y = y * 1.0001 + 0.001
        y.sum().backward()
    n_ops = len(tally(chain).ops)
    op_us = median_time(chain, reps) / n_ops * 1e6
    return {"matmul_gflops": mm, "conv_gflops": conv, "bandwidth_gbs": bandwidth, "op_us": op_us}
