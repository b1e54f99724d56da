"""Shared helpers for testing bound domains: random small certified nets, an empirical soundness check (sampling,
box corners and PGD), and exact MILP margin extrema (scipy's HiGHS): :func:`exact_margin_min`/``max`` for FC ReLU nets
and :func:`exact_margin_extrema` for any supported net (conv, BatchNorm, residual).

Everything here is independent of the bound engine's own code (the MILPs read ``nn`` modules directly), so a bug in
``pipeline.bounds`` cannot hide itself.  Domains are parameters: ``check_sound`` takes a registered name or any
``Domain`` class (registered or not), ``check_sound_all(..., domains=None)`` a list (default: every registered
domain, :func:`all_domains`), so test files for new domains reuse these helpers unchanged.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.bounds import DOMAINS, bound_margins
from pipeline.models.zoo import CertifiedNet, Normalize, Residual

__all__ = ["NET_KINDS", "FC_KINDS", "Case", "all_domains", "make_case", "make_net", "make_tiny_fc", "make_edge_net",
           "margins", "input_box_ref", "empirical_extremes", "check_sound", "check_sound_all", "exact_margin_min",
           "exact_margin_max", "exact_margin_extrema", "interval_preacts", "TOL32", "TOL64"]

TOL64 = 1e-9
TOL32 = 1e-5


def all_domains() -> list[str]:
    """Every registered domain name (the default ``domains`` list of the helpers)."""
    return sorted(DOMAINS)


# ----------------------------------------------------------------------------------------------------------------
# Random nets
# ----------------------------------------------------------------------------------------------------------------

def _init_(module: nn.Module, gen: torch.Generator, gain: float, bias_scale: float) -> None:
    """Gaussian weights with std ``gain / sqrt(fan_in)`` and Gaussian biases; random BatchNorm statistics."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * gain / math.sqrt(fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * bias_scale)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.3)
                if m.affine:
                    sign = torch.where(torch.rand(n, generator=gen) < 0.2, -1.0, 1.0)
                    m.weight.copy_(sign * (torch.rand(n, generator=gen) * 1.2 + 0.4))
                    m.bias.copy_(torch.randn(n, generator=gen) * 0.3)


def _conv_out(side: int, k: int, s: int, p: int) -> int:
    return (side + 2 * p - k) // s + 1


def _conv_cfg(gen: torch.Generator, side: int, min_out: int, max_out: int) -> tuple[int, int, int, int]:
    """A random (kernel, stride, padding, out_side) with stride 1 or 2 and padding 0 or 1."""
    while True:
        k = int(torch.randint(2, 4, (1,), generator=gen))
        s = int(torch.randint(1, 3, (1,), generator=gen))
        p = int(torch.randint(0, 2, (1,), generator=gen))
        out = _conv_out(side, k, s, p)
        if min_out <= out <= max_out:
            return k, s, p, out


def _fc(gen, d_in, widths, bn1d=False):
    layers: list[nn.Module] = [nn.Flatten()]
    prev = d_in
    for i, w in enumerate(widths):
        layers.append(nn.Linear(prev, w, bias=not (bn1d and i == 0)))  # a bias-free Linear before BatchNorm
        if bn1d:
            layers.append(nn.BatchNorm1d(w))
        layers.append(nn.ReLU())
        prev = w
    layers.append(nn.Linear(prev, 10))
    return layers


#: net kind -> input shape (C, H, W); every kind covers a different mix of supported layers
NET_KINDS: dict[str, tuple[int, int, int]] = {
    "fc": (1, 6, 6),
    "fc_bn1d": (2, 3, 3),
    "conv": (1, 6, 6),
    "conv_bn": (2, 5, 5),
    "residual": (1, 5, 5),
    "residual_down_bn": (2, 6, 6),
    "fc_tail": (1, 4, 4),
}
#: kinds made of Flatten/Linear/BatchNorm1d/ReLU only (after Normalize): ``exact_margin_min`` accepts them
FC_KINDS = ("fc", "fc_bn1d")


def make_net(kind: str, seed: int, gain: float = 1.6, bias_scale: float = 0.3) -> CertifiedNet:
    """A random small :class:`CertifiedNet` of ``kind`` (see :data:`NET_KINDS`) in eval mode, float32."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    c, h, _ = NET_KINDS[kind]
    layers: list[nn.Module]
    if kind == "fc":
        layers = _fc(gen, c * h * h, [int(torch.randint(8, 17, (1,), generator=gen)), 12])
    elif kind == "fc_bn1d":
        layers = _fc(gen, c * h * h, [14, 10], bn1d=True)
    elif kind in ("conv", "conv_bn"):
        ch1, ch2 = 2, 3
        k1, s1, p1, o1 = _conv_cfg(gen, h, 3, 4)
        k2, s2, p2, o2 = _conv_cfg(gen, o1, 2, 3)
        bn = kind == "conv_bn"
        layers = [nn.Conv2d(c, ch1, k1, stride=s1, padding=p1, bias=not bn)]
        layers += [nn.BatchNorm2d(ch1)] if bn else []
        layers += [nn.ReLU(), nn.Conv2d(ch1, ch2, k2, stride=s2, padding=p2)]
        layers += [nn.BatchNorm2d(ch2, affine=False)] if bn else []
        layers += [nn.ReLU(), nn.Flatten(), nn.Linear(ch2 * o2 * o2, 8), nn.ReLU(), nn.Linear(8, 10)]
    elif kind == "fc_tail":
        # the logits are not produced by a Linear (the spec cannot be folded): BatchNorm1d or ReLU at the end
        tail = nn.BatchNorm1d(10) if seed % 2 == 0 else nn.ReLU()
        layers = _fc(gen, c * h * h, [10, 12]) + [tail]
    elif kind == "residual":
        # stem conv (stride 2, padding 1), then a same-size block with an identity or 1x1-conv shortcut
        ch = 2
        o = _conv_out(h, 3, 2, 1)
        identity = bool(torch.randint(0, 2, (1,), generator=gen))
        main = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(), nn.Conv2d(ch, ch, 3, padding=1))
        shortcut = nn.Sequential() if identity else nn.Sequential(nn.Conv2d(ch, ch, 1))
        layers = [nn.Conv2d(c, ch, 3, stride=2, padding=1), nn.ReLU(), Residual(main, shortcut), nn.ReLU(),
                  nn.Flatten(), nn.Linear(ch * o * o, 6), nn.ReLU(), nn.Linear(6, 10)]
    elif kind == "residual_down_bn":
        # downsampling residual block (as in the zoo's CIFAR_Resnet), BatchNorm inside the main branch
        ch = 2
        o = _conv_out(h, 4, 2, 1)
        main = nn.Sequential(nn.Conv2d(c, ch, 4, stride=2, padding=1), nn.BatchNorm2d(ch), nn.ReLU(),
                             nn.Conv2d(ch, ch, 3, stride=1, padding=1))
        shortcut = nn.Sequential(nn.Conv2d(c, ch, 2, stride=2, padding=0))
        layers = [Residual(main, shortcut), nn.BatchNorm2d(ch), nn.ReLU(), nn.Flatten(),
                  nn.Linear(ch * o * o, 8), nn.ReLU(), nn.Linear(8, 10)]
    else:
        raise KeyError(kind)
    net = nn.Sequential(*layers)
    _init_(net, gen, gain, bias_scale)
    mean = (torch.rand(c, generator=gen) * 0.4 + 0.2).tolist()
    std = (torch.rand(c, generator=gen) * 0.3 + 0.2).tolist()
    model = CertifiedNet(net, mean, std, "synthetic")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def make_tiny_fc(seed: int, widths: Sequence[int] = (8, 8), input_shape: tuple[int, int, int] = (1, 2, 3),
                 bn1d: bool = False, gain: float = 1.6, bias_scale: float = 0.3) -> CertifiedNet:
    """A tiny FC ReLU :class:`CertifiedNet` (``Flatten, (Linear, [BatchNorm1d], ReLU)*, Linear``) for the MILP."""
    gen = torch.Generator().manual_seed(30_000 + seed)
    c = input_shape[0]
    net = nn.Sequential(*_fc(gen, math.prod(input_shape), list(widths), bn1d=bn1d))
    _init_(net, gen, gain, bias_scale)
    mean = (torch.rand(c, generator=gen) * 0.4 + 0.2).tolist()
    std = (torch.rand(c, generator=gen) * 0.3 + 0.2).tolist()
    return CertifiedNet(net, mean, std, "synthetic").eval()


def make_edge_net(x: torch.Tensor, eps: float, y: int, edge: str, delta: float, sign: float = 1.0,
                  K: float = 10.0) -> tuple[CertifiedNet, list[float]]:
    """A 2-layer net whose one ReLU is *barely* unstable on the box of ``x`` (shape ``[1, 1, 1, d]``).

    Hidden ``n1 = x0 - c`` and ``n2 = x0 - c + K`` (always active); logits ``z_j = 0`` for ``j != y`` and
    ``z_y = sign * (relu(n1) - alpha * (relu(n2) - K))``:

    - ``edge="upper"``: ``c = hi0 - delta`` so ``n1`` lies in ``[lo0 - c, delta]``; ``alpha = 0``: margin
      ``sign * relu(x0 - c)`` has range ``[0, delta]`` (times ``sign``);
    - ``edge="lower"``: ``c = lo0 + delta`` so ``n1`` lies in ``[-delta, hi0 - c]``; ``alpha = 1`` cancels the linear
      part: margin ``sign * relu(c - x0)``, again of range ``[0, delta]``.

    A domain that rounds a barely unstable neuron to dead/active (or mis-relaxes it) loses the ``delta`` part.  Choose
    dyadic ``x0``, ``eps`` and ``delta`` so that ``c`` is exact in float32.  Returns the net and the points ``x0``
    (breakpoints) where the margin's extrema are attained.
    """
    d = x.shape[-1]
    lo0 = max(float(x.flatten()[0]) - eps, 0.0)
    hi0 = min(float(x.flatten()[0]) + eps, 1.0)
    c = hi0 - delta if edge == "upper" else lo0 + delta
    alpha = 0.0 if edge == "upper" else 1.0
    l1, l2 = nn.Linear(d, 2), nn.Linear(2, 10)
    with torch.no_grad():
        l1.weight.zero_()
        l1.weight[:, 0] = 1.0
        l1.bias.copy_(torch.tensor([-c, -c + K]))
        l2.weight.zero_()
        l2.bias.zero_()
        l2.weight[y] = torch.tensor([sign, -sign * alpha])
        l2.bias[y] = sign * alpha * K
    net = CertifiedNet(nn.Sequential(nn.Flatten(), l1, nn.ReLU(), l2), [0.0], [1.0], "synthetic").eval()
    c32 = -float(l1.bias[0].detach())  # the kink as stored (float32)
    return net, [lo0, hi0, min(max(c32, lo0), hi0)]


@dataclass
class Case:
    model: CertifiedNet
    x: torch.Tensor
    y: torch.Tensor
    eps: float
    kind: str
    seed: int


def make_case(kind: str, seed: int, batch: int = 2, eps: float | None = None, **net_kw) -> Case:
    """A random net of ``kind`` with a batch of pixel inputs (some pixels at 0/1, so the [0,1] clamp matters)."""
    model = make_net(kind, seed, **net_kw)
    gen = torch.Generator().manual_seed(20_000 + seed)
    shape = NET_KINDS[kind]
    x = torch.rand(batch, *shape, generator=gen)
    x = torch.where(torch.rand(x.shape, generator=gen) < 0.15, x.round(), x)
    y = torch.randint(0, 10, (batch,), generator=gen)
    if eps is None:
        eps = float([0.03, 0.08, 0.15][seed % 3])
    return Case(model, x, y, eps, kind, seed)


# ----------------------------------------------------------------------------------------------------------------
# Empirical extremes
# ----------------------------------------------------------------------------------------------------------------

def input_box_ref(x: torch.Tensor, eps: float, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """The threat-model box, computed independently of ``pipeline.bounds``."""
    x = x.to(dtype)
    return (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)


def margins(model64: nn.Module, pts: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """True margins ``z_y - z_j`` ``[N, 10]`` of a (float64) model at points ``pts`` ``[N, ...]``, labels ``[N]``."""
    z = model64(pts)
    return z.gather(1, y[:, None]) - z


def _double(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).double().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@torch.no_grad()
def _sample(model64, lo, hi, y, n_uniform, n_corners, gen):
    """Min/max of margins over uniform samples and random box corners. Returns ``[B,10]`` each."""
    b = lo.shape[0]
    u = torch.rand(b, n_uniform + n_corners, *lo.shape[1:], generator=gen, dtype=torch.float64)
    u[:, n_uniform:] = u[:, n_uniform:].round()  # corners
    pts = lo[:, None] + (hi - lo)[:, None] * u
    m = margins(model64, pts.flatten(0, 1), y.repeat_interleave(pts.shape[1])).view(b, -1, 10)
    return m.min(1).values, m.max(1).values


def _pgd(model64, lo, hi, y, steps, restarts, gen):
    """Signed-gradient PGD minimising and maximising every margin separately.  Returns ``(min, max)`` ``[B,10]``."""
    b, shape = lo.shape[0], lo.shape[1:]
    # replicas [B, 10 (margin j), 2 (min/max), R, *shape]
    rep = (b, 10, 2, restarts)
    lo_r = lo.view(b, 1, 1, 1, *shape).expand(*rep, *shape)
    hi_r = hi.view(b, 1, 1, 1, *shape).expand(*rep, *shape)
    start = torch.rand(*rep, *shape, generator=gen, dtype=lo.dtype)
    start[..., 0, :, :, :] = 0.5  # one restart from the centre
    pts = lo_r + (hi_r - lo_r) * start
    yy = y.view(b, 1, 1, 1).expand(rep).reshape(-1)
    jj = torch.arange(10).view(1, 10, 1, 1).expand(rep).reshape(-1)
    sign = torch.tensor([1.0, -1.0], dtype=lo.dtype).view(1, 1, 2, 1).expand(rep).reshape(-1)  # minimise sign*m
    best_min = torch.full((b, 10), math.inf, dtype=lo.dtype)
    best_max = torch.full((b, 10), -math.inf, dtype=lo.dtype)
    width = hi_r - lo_r

    def record(vals):
        v = vals.view(*rep)
        nonlocal best_min, best_max
        best_min = torch.minimum(best_min, v[:, :, 0].min(-1).values)
        best_max = torch.maximum(best_max, v[:, :, 1].max(-1).values)

    for t in range(steps):
        p = pts.detach().reshape(-1, *shape).requires_grad_(True)
        m = margins(model64, p, yy).gather(1, jj[:, None])[:, 0]
        record(m.detach())
        (grad,) = torch.autograd.grad((sign * m).sum(), p)
        alpha = 0.25 * (1 - t / steps) + 0.02
        pts = pts - alpha * width * grad.view(*rep, *shape).sign()
        pts = torch.minimum(torch.maximum(pts, lo_r), hi_r)
    with torch.no_grad():
        record(margins(model64, pts.reshape(-1, *shape), yy).gather(1, jj[:, None])[:, 0])
    return best_min, best_max


def empirical_extremes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, n_uniform: int = 1500,
                       n_corners: int = 500, steps: int = 30, restarts: int = 3,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smallest and largest true margins ``[B, 10]`` (float64) found by sampling, box corners and PGD."""
    gen = torch.Generator().manual_seed(seed)
    model64 = _double(model)
    lo, hi = input_box_ref(x, eps)
    smin, smax = _sample(model64, lo, hi, y, n_uniform, n_corners, gen)
    pmin, pmax = _pgd(model64, lo, hi, y, steps, restarts, gen)
    return torch.minimum(smin, pmin), torch.maximum(smax, pmax)


def check_sound(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, domain,
                extremes: tuple[torch.Tensor, torch.Tensor] | None = None,
                dtypes: Sequence[torch.dtype] = (torch.float64, torch.float32)) -> dict:
    """Assert ``lb <= margin <= ub`` on every sampled/corner/PGD point of the box, for each dtype.

    ``extremes`` (from :func:`empirical_extremes`) can be shared between domains.  Returns the bounds per dtype.
    """
    if extremes is None:
        extremes = empirical_extremes(model, x, y, eps)
    emin, emax = extremes
    out = {}
    for dtype in dtypes:
        with torch.no_grad():
            lb, ub = bound_margins(model, x, y, eps, domain, dtype)
        assert lb.dtype == dtype and ub.dtype == dtype, (lb.dtype, ub.dtype)
        assert lb.shape == ub.shape == (x.shape[0], 10)
        lb, ub = lb.double(), ub.double()
        assert torch.isfinite(lb).all() and torch.isfinite(ub).all(), (lb, ub)
        scale = torch.maximum(lb.abs(), ub.abs()).clamp_min(1.0)
        tol = TOL64 * scale if dtype == torch.float64 else TOL32 * scale
        bad_lo = lb > emin + tol
        bad_hi = ub < emax - tol
        name = getattr(domain, "name", getattr(domain, "__name__", domain))
        assert not bad_lo.any(), (f"{name} {dtype}: lower bound above an attained margin by "
                                  f"{(lb - emin).max().item():.3e}\nlb={lb[bad_lo]}\nattained={emin[bad_lo]}")
        assert not bad_hi.any(), (f"{name} {dtype}: upper bound below an attained margin by "
                                  f"{(emax - ub).max().item():.3e}\nub={ub[bad_hi]}\nattained={emax[bad_hi]}")
        # the label's own margin is identically 0
        idx = torch.arange(x.shape[0])
        assert torch.allclose(lb[idx, y], torch.zeros(x.shape[0], dtype=torch.float64), atol=tol.max().item())
        assert torch.allclose(ub[idx, y], torch.zeros(x.shape[0], dtype=torch.float64), atol=tol.max().item())
        out[dtype] = (lb, ub)
    return out


def check_sound_all(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                    domains: Sequence | None = None, **kw) -> dict:
    """:func:`check_sound` for each of ``domains`` (default: every registered domain), sharing one attack."""
    extremes = kw.pop("extremes", None) or empirical_extremes(model, x, y, eps)
    return {d: check_sound(model, x, y, eps, d, extremes=extremes, **kw) for d in (domains or all_domains())}


# ----------------------------------------------------------------------------------------------------------------
# Exact MILP (FC ReLU nets)
# ----------------------------------------------------------------------------------------------------------------

def _fc_layers(model: CertifiedNet) -> list[tuple[np.ndarray, np.ndarray]]:
    """The affine layers of a Normalize + Flatten/Linear/BatchNorm1d/ReLU net, folded into ``[(W, b)]`` in float64,
    with a ReLU between consecutive entries.  The Normalize is folded into the first layer (pixel input)."""
    mods = [m for m in model.net]
    assert isinstance(model.normalize, Normalize)
    mean = model.normalize.mean.double().flatten().numpy()
    std = model.normalize.std.double().flatten().numpy()
    assert isinstance(mods[0], nn.Flatten), "MILP nets must start with nn.Flatten"
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    cur: tuple[np.ndarray, np.ndarray] | None = None
    for m in mods[1:]:
        if isinstance(m, nn.Linear):
            w = m.weight.detach().double().numpy()
            b = np.zeros(w.shape[0]) if m.bias is None else m.bias.detach().double().numpy()
            cur = (w, b) if cur is None else (w @ cur[0], w @ cur[1] + b)
        elif isinstance(m, nn.BatchNorm1d):
            assert not m.training
            s = 1.0 / np.sqrt(m.running_var.double().numpy() + m.eps)
            if m.affine:
                s = m.weight.detach().double().numpy() * s
            t = (m.bias.detach().double().numpy() if m.affine else 0.0) - m.running_mean.double().numpy() * s
            cur = (s[:, None] * cur[0], s * cur[1] + t)
        elif isinstance(m, nn.ReLU):
            layers.append(cur)
            cur = None
        else:
            raise TypeError(f"MILP helper does not support {m}")
    layers.append(cur)
    # fold the normalisation: the input is x (pixels), n = (x - mean_c) / std_c with the channel of each pixel
    w0, b0 = layers[0]
    per_pixel = w0.shape[1] // len(mean)
    m_vec, s_vec = np.repeat(mean, per_pixel), np.repeat(std, per_pixel)
    layers[0] = (w0 / s_vec[None], b0 - w0 @ (m_vec / s_vec))
    return layers


def interval_preacts(model: CertifiedNet, lo: np.ndarray, hi: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Exact-arithmetic-independent interval bounds of every pre-activation (and the logits) of an FC net."""
    out = []
    l, u = lo, hi
    for i, (w, b) in enumerate(_fc_layers(model)):
        if i > 0:
            l, u = np.maximum(l, 0), np.maximum(u, 0)
        c, r = (l + u) / 2, (u - l) / 2
        l, u = w @ c + b - np.abs(w) @ r, w @ c + b + np.abs(w) @ r
        out.append((l, u))
    return out


def _milp_margin(model: CertifiedNet, x: torch.Tensor, y: int, eps: float, sense: float):
    """``min sense * (z_y - z_j)`` over the box for every ``j``: values ``[10]`` (in margin units) and argmins."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import lil_matrix

    lo, hi = (t.flatten().numpy() for t in input_box_ref(x, eps))
    layers = _fc_layers(model)
    pre = interval_preacts(model, lo, hi)
    d = lo.size
    # variables: x (d) | for each hidden layer: z (n), a (n), delta (n)
    n_hidden = [w.shape[0] for w, _ in layers[:-1]]
    nvar = d + 3 * sum(n_hidden)
    lb_v, ub_v = np.empty(nvar), np.empty(nvar)
    integ = np.zeros(nvar)
    lb_v[:d], ub_v[:d] = lo, hi
    rows: list[tuple[dict[int, float], float, float]] = []
    prev = list(range(d))
    off = d
    for (w, b), (l, u) in zip(layers[:-1], pre[:-1]):
        n = w.shape[0]
        z, a, dl = off + np.arange(n), off + n + np.arange(n), off + 2 * n + np.arange(n)
        off += 3 * n
        lb_v[z], ub_v[z] = l, u
        lb_v[a], ub_v[a] = np.maximum(l, 0), np.maximum(u, 0)
        lb_v[dl], ub_v[dl] = 0, 1
        integ[dl] = 1
        for k in range(n):
            # z_k = W_k . prev + b_k
            coeffs = {int(p): float(w[k, i]) for i, p in enumerate(prev)}
            coeffs[int(z[k])] = -1.0
            rows.append((coeffs, -b[k], -b[k]))
            if u[k] <= 0:  # dead: a = 0
                rows.append(({int(a[k]): 1.0}, 0.0, 0.0))
                ub_v[dl[k]] = 0
            elif l[k] >= 0:  # active: a = z
                rows.append(({int(a[k]): 1.0, int(z[k]): -1.0}, 0.0, 0.0))
                lb_v[dl[k]] = 1
            else:
                rows.append(({int(a[k]): 1.0, int(z[k]): -1.0}, 0.0, np.inf))  # a >= z
                rows.append(({int(a[k]): 1.0, int(z[k]): -1.0, int(dl[k]): -l[k]}, -np.inf, -l[k]))  # a <= z - l(1-d)
                rows.append(({int(a[k]): 1.0, int(dl[k]): -u[k]}, -np.inf, 0.0))  # a <= u d
        prev = list(a)
    A = lil_matrix((len(rows), nvar))
    rl, ru = np.empty(len(rows)), np.empty(len(rows))
    for r, (coeffs, low, up) in enumerate(rows):
        for col, v in coeffs.items():
            A[r, col] = v
        rl[r], ru[r] = low, up
    cons = LinearConstraint(A.tocsr(), rl, ru)
    w_out, b_out = layers[-1]
    vals, args = np.zeros(10), np.zeros((10, d))
    for j in range(10):
        if j == y:
            continue
        cvec = np.zeros(nvar)
        cvec[prev] = sense * (w_out[y] - w_out[j])
        res = milp(cvec, constraints=cons, integrality=integ, bounds=Bounds(lb_v, ub_v),
                   options={"mip_rel_gap": 0.0, "presolve": True})
        assert res.status == 0, res.message
        vals[j] = sense * (res.fun + sense * (b_out[y] - b_out[j]))
        args[j] = res.x[:d]
    return vals, args


def exact_margin_min(net: CertifiedNet, x: torch.Tensor, y: torch.Tensor, eps: float,
                     return_argmin: bool = False):
    """Exact ``min`` over the box ``clamp(x ± eps, 0, 1)`` of each margin ``z_y - z_j`` ``[B, 10]`` (float64), for a
    :class:`CertifiedNet` whose ``net`` is ``Flatten, (Linear, [BatchNorm1d], ReLU)*, Linear``.  Big-M MILP with
    interval pre-activation bounds, solved by HiGHS to a zero gap.  Optionally the minimisers ``[B, 10, *x.shape[1:]]``.
    """
    return _milp_margins(net, x, y, eps, 1.0, return_argmin)


def exact_margin_max(net: CertifiedNet, x: torch.Tensor, y: torch.Tensor, eps: float,
                     return_argmax: bool = False):
    """Exact ``max`` of each margin over the box (as :func:`exact_margin_min`)."""
    return _milp_margins(net, x, y, eps, -1.0, return_argmax)


def _milp_margins(net: CertifiedNet, x: torch.Tensor, y: torch.Tensor, eps: float, sign: float, with_args: bool):
    """Per sample, the MILP optimum of ``sign * margin`` (``sign`` 1: min, -1: max), optionally with optimisers."""
    vals, args = [], []
    for b in range(x.shape[0]):
        v, a = _milp_margin(net, x[b], int(y[b]), eps, sign)
        vals.append(v)
        args.append(a)
    out = torch.tensor(np.stack(vals), dtype=torch.float64)
    if with_args:
        return out, torch.tensor(np.stack(args), dtype=torch.float64).view(x.shape[0], 10, *x.shape[1:])
    return out


# ----------------------------------------------------------------------------------------------------------------
# Exact MILP for any supported net (conv, BatchNorm, residual), by tracing affine expressions
# ----------------------------------------------------------------------------------------------------------------

class _Program:
    """MILP variables/constraints; an expression is a tensor ``[1 + nvar, *shape]`` (constant row + coefficients)."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray):
        self.lb, self.ub, self.integ = list(lo), list(hi), [0] * lo.size
        self.rows: list[tuple[np.ndarray, float, float]] = []

    @property
    def nvar(self) -> int:
        return len(self.lb)

    def new_var(self, lo: float, hi: float, integer: bool = False) -> int:
        self.lb.append(lo)
        self.ub.append(hi)
        self.integ.append(int(integer))
        return self.nvar - 1

    def pad(self, e: torch.Tensor) -> torch.Tensor:
        extra = 1 + self.nvar - e.shape[0]
        return e if extra == 0 else torch.cat([e, e.new_zeros(extra, *e.shape[1:])])

    def bounds(self, e: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Interval bounds of each entry of ``e`` from the variables' bounds."""
        e = self.pad(e).flatten(1).numpy()
        lb, ub = np.array(self.lb), np.array(self.ub)
        c, coef = e[0], e[1:]
        pos, neg = np.clip(coef, 0, None), np.clip(coef, None, 0)
        return c + pos.T @ lb + neg.T @ ub, c + pos.T @ ub + neg.T @ lb

    def constrain(self, coef: np.ndarray, low: float, up: float) -> None:
        self.rows.append((coef.copy(), low, up))

    def relu(self, e: torch.Tensor) -> torch.Tensor:
        e = self.pad(e)
        shape = e.shape[1:]
        flat = e.flatten(1).numpy()
        l, u = self.bounds(e)
        out_cols = []
        for k in range(flat.shape[1]):
            if u[k] <= 0:
                out_cols.append(None)
            elif l[k] >= 0:
                out_cols.append(flat[:, k])
            else:
                a = self.new_var(0.0, float(u[k]))
                d = self.new_var(0.0, 1.0, integer=True)
                out_cols.append(a)
                c = flat[0, k]
                # with e = c + base: a >= e;  a <= e - l (1 - d);  a <= u d
                minus_e = np.zeros(self.nvar)
                minus_e[:flat.shape[0] - 1] = -flat[1:, k]
                r1 = minus_e.copy()
                r1[a] += 1
                self.constrain(r1, c, np.inf)
                r2 = r1.copy()
                r2[d] -= l[k]
                self.constrain(r2, -np.inf, c - l[k])
                r3 = np.zeros(self.nvar)
                r3[a], r3[d] = 1.0, -u[k]
                self.constrain(r3, -np.inf, 0.0)
        out = np.zeros((1 + self.nvar, len(out_cols)))
        for k, col in enumerate(out_cols):
            if col is None:
                continue
            if isinstance(col, int):
                out[1 + col, k] = 1.0
            else:
                out[:col.shape[0], k] = col
        return torch.from_numpy(out).view(1 + self.nvar, *shape)


def _trace(module: nn.Module, e: torch.Tensor, prog: _Program) -> torch.Tensor:
    if isinstance(module, CertifiedNet):
        return _trace(module.net, _trace(module.normalize, e, prog), prog)
    if isinstance(module, nn.Sequential):
        for child in module:
            e = _trace(child, e, prog)
        return e
    if isinstance(module, Residual):
        main = _trace(module.main, e, prog)
        short = _trace(module.shortcut, e, prog)
        return prog.pad(main) + prog.pad(short)
    if isinstance(module, nn.ReLU):
        return prog.relu(e)
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.Flatten, Normalize, nn.modules.batchnorm._BatchNorm)):
        assert not module.training
        with torch.no_grad():
            const = module(e[:1])
            coef = module(e[1:]) - module(torch.zeros_like(e[:1]))
        return torch.cat([const, coef])
    raise TypeError(f"MILP tracer does not support {module}")


def exact_margin_extrema(model: nn.Module, x: torch.Tensor, y: int, eps: float):
    """Exact ``(min, max, argmin, argmax)`` of the margins ``z_y - z_j`` (``[10]``, ``[10]``, ``[10, *shape]`` x2) over
    the box of one sample ``x`` (no batch dim) for any net built from Linear/Conv2d/BatchNorm/Normalize/Flatten/ReLU/
    Residual.  Big-M MILP whose big-M bounds come from interval arithmetic over the traced affine forms."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    model64 = _double(model)
    lo, hi = (t.flatten().numpy() for t in input_box_ref(x, eps))
    d = lo.size
    prog = _Program(lo, hi)
    e_in = torch.cat([torch.zeros(1, d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)]).view(1 + d, *x.shape)
    out = prog.pad(_trace(model64, e_in, prog))
    n = prog.nvar
    A = np.zeros((len(prog.rows), n))
    rl, ru = np.empty(len(prog.rows)), np.empty(len(prog.rows))
    for i, (coef, low, up) in enumerate(prog.rows):
        A[i, :coef.size] = coef
        rl[i], ru[i] = low, up
    cons = [LinearConstraint(A, rl, ru)] if len(prog.rows) else []
    bounds = Bounds(np.array(prog.lb), np.array(prog.ub))
    integ = np.array(prog.integ)
    out = out.numpy()  # [1 + n, 10]
    vals = {1.0: np.zeros(10), -1.0: np.zeros(10)}
    args = {1.0: np.tile(lo, (10, 1)), -1.0: np.tile(lo, (10, 1))}
    for j in range(10):
        if j == y:
            continue
        diff = out[:, y] - out[:, j]
        for sense in (1.0, -1.0):
            res = milp(sense * diff[1:], constraints=cons, integrality=integ, bounds=bounds,
                       options={"mip_rel_gap": 0.0})
            assert res.status == 0, res.message
            vals[sense][j] = sense * res.fun + diff[0]
            args[sense][j] = res.x[:d]
    shape = (10, *x.shape)
    return (torch.from_numpy(vals[1.0]), torch.from_numpy(vals[-1.0]),
            torch.from_numpy(args[1.0]).view(shape), torch.from_numpy(args[-1.0]).view(shape))


@pytest.fixture(autouse=True, scope="module")
def one_thread_per_module():
    """Tiny tensors: intra-op threads only add overhead (and contention with other processes)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
