"""Oracles for the parity suite: torch.nn.functional (float64, CPU) and an independent NumPy reference."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Tuple

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the NumPy reference still runs
    torch = None


@dataclasses.dataclass(frozen=True)
class Case:
    """One convolution configuration, in PyTorch terms."""

    n: int
    transposed: bool
    batch: int
    in_channels: int
    out_channels: int
    spatial: Tuple[int, ...]
    kernel: Tuple[int, ...]
    stride: Tuple[int, ...] = ()
    padding: object = 0
    dilation: Tuple[int, ...] = ()
    groups: int = 1
    padding_mode: str = "zeros"
    output_padding: Tuple[int, ...] = ()
    bias: bool = True
    channels_last: bool = False
    unbatched: bool = False

    def __post_init__(self):
        for name in ("stride", "dilation"):
            if getattr(self, name) == ():
                object.__setattr__(self, name, (1,) * self.n)
        if self.output_padding == ():
            object.__setattr__(self, "output_padding", (0,) * self.n)
        if self.unbatched and self.batch != 1:
            raise ValueError("an unbatched Case has batch 1")

    @property
    def weight_shape(self):
        if self.transposed:
            return (self.in_channels, self.out_channels // self.groups, *self.kernel)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel)

    def arrays(self, seed: int = 0, complex_: bool = False):
        rng = np.random.default_rng(seed)
        draw = (lambda shape: rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) if complex_ else \
            rng.standard_normal
        x = draw((self.batch, self.in_channels, *self.spatial))
        w = draw(self.weight_shape)
        b = draw(self.out_channels) if self.bias else None
        return x, w, b

    def jconv_kwargs(self):
        kw = dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                  channels_last=self.channels_last)
        if self.transposed:
            kw["output_padding"] = self.output_padding
        else:
            kw["padding_mode"] = self.padding_mode
        return kw


def torch_forward_and_grads(case: Case, x, w, b, cotangent):
    """torch's output and the gradients of re(sum(output * conj(cotangent))) w.r.t. x, w, b (float64 or
    complex128): sum(output * cotangent) for real arrays."""
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)
    if case.transposed:
        fn = getattr(F, f"conv_transpose{case.n}d")
        y = fn(xt, wt, bt, stride=case.stride, padding=case.padding, output_padding=case.output_padding,
               groups=case.groups, dilation=case.dilation)
    else:
        xin = xt
        padding = case.padding
        if case.padding_mode != "zeros":
            pads = resolve_pads(case)
            torch_pad = [a for lo_hi in reversed(pads) for a in lo_hi]
            xin = F.pad(xt, torch_pad, mode=case.padding_mode)
            padding = 0
        y = getattr(F, f"conv{case.n}d")(xin, wt, bt, stride=case.stride, padding=padding,
                                          dilation=case.dilation, groups=case.groups)
    (y * torch.tensor(cotangent).conj()).real.sum().backward()
    return (y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), None if bt is None else bt.grad.numpy())



def resolve_pads(case: Case):
    """(lo, hi) per spatial axis, PyTorch's rules."""
    if case.padding == "valid":
        return [(0, 0)] * case.n
    if case.padding == "same":
        out = []
        for k, d in zip(case.kernel, case.dilation):
            total = d * (k - 1)
            out.append((total // 2, total - total // 2))
        return out
    p = case.padding if isinstance(case.padding, tuple) else (case.padding,) * case.n
    return [(a, a) for a in p]


# --- an independent NumPy reference (direct loops over kernel taps) -----------------------------------------


def _np_pad(x, pads, mode):
    widths = [(0, 0), (0, 0)] + list(pads)
    np_mode = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
    return np.pad(x, widths, mode=np_mode)


def numpy_conv(case: Case, x, w, b):
    """Forward convolution by explicit accumulation over kernel taps, per group."""
    pads = resolve_pads(case)
    xp = _np_pad(x, pads, case.padding_mode)
    n, g = case.n, case.groups
    cin_g, cout_g = case.in_channels // g, case.out_channels // g
    out_sp = [(xp.shape[2 + i] - case.dilation[i] * (case.kernel[i] - 1) - 1) // case.stride[i] + 1
              for i in range(n)]
    y = np.zeros((x.shape[0], case.out_channels, *out_sp))
    for gi in range(g):
        xg = xp[:, gi * cin_g:(gi + 1) * cin_g]
        wg = w[gi * cout_g:(gi + 1) * cout_g]
        for tap in itertools.product(*[range(k) for k in case.kernel]):
            sl = tuple(slice(t * d, t * d + (o - 1) * s + 1, s)
                       for t, d, o, s in zip(tap, case.dilation, out_sp, case.stride))
            patch = xg[(slice(None), slice(None)) + sl]  # (N, cin_g, *out)
            y[:, gi * cout_g:(gi + 1) * cout_g] += np.einsum("nc...,oc->no...", patch, wg[(...,) + tap])
    if b is not None:
        y += b.reshape((1, -1) + (1,) * n)
    return y


def numpy_conv_transpose(case: Case, x, w, b):
    """Transposed convolution by scattering every input element through every tap (the definition)."""
    n, g = case.n, case.groups
    cin_g, cout_g = case.in_channels // g, case.out_channels // g
    pads = [p for p, _ in resolve_pads(case)]
    full = [(i - 1) * s + d * (k - 1) + 1 + op
            for i, s, d, k, op in zip(x.shape[2:], case.stride, case.dilation, case.kernel, case.output_padding)]
    y = np.zeros((x.shape[0], case.out_channels, *full))
    for gi in range(g):
        xg = x[:, gi * cin_g:(gi + 1) * cin_g]
        wg = w[gi * cin_g:(gi + 1) * cin_g]  # (cin_g, cout_g, *k)
        for tap in itertools.product(*[range(k) for k in case.kernel]):
            contrib = np.einsum("nc...,co->no...", xg, wg[(slice(None), slice(None)) + tap])
            sl = tuple(slice(t * d, t * d + (i - 1) * s + 1, s)
                       for t, d, i, s in zip(tap, case.dilation, x.shape[2:], case.stride))
            y[(slice(None), slice(gi * cout_g, (gi + 1) * cout_g)) + sl] += contrib
    crop = tuple(slice(p, f - p) for p, f in zip(pads, full))
    y = y[(slice(None), slice(None)) + crop]
    if b is not None:
        y += b.reshape((1, -1) + (1,) * n)
    return y
