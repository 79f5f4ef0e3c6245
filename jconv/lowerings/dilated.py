"""Dilated convolution by space-to-batch: a dilation-d conv is a dense conv on d^N interleaved sub-images.

With stride 1 along a dilated axis, output o = q*d + r only reads inputs i = (q + t)*d + r: phase r of the
output is an undilated conv of phase r of the input. So the (zero-padded) input is split into its phases, the
phases are stacked on the batch axis, ONE undilated convolution runs (chosen by dispatch like any other, so the
dense kernels' fast forward and backward are used), and the phases are interleaved back. Only reshapes and
transposes surround the conv: no gathers, no scatters.

XLA lowers dilated convs' backward passes 7-23x slower than their forward on an H100 (../shared/BASELINES.md),
because it materializes them as padded convs; this form never asks XLA for a dilated conv.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp

from jconv.lowerings.common import MAX_PHASES, padded_spatial, spatial_axes, zero_pad
from jconv.spec import ConvSpec

NAME = "dilated"
DETERMINISTIC = True  # reshapes around whichever deterministic lowering runs the inner conv


def accepts(spec: ConvSpec):
    if set(spec.explicit_sharding) & {'batch', 'spatial', 'channel'}:
        return f"pads, slices or reshapes axes ({', '.join(spec.explicit_sharding)}) sharded over an Explicit mesh axis"
    if spec.transposed:
        return "transposed convolutions are handled by the xla lowering"
    if all(d == 1 for d in spec.dilation):
        return "no dilation > 1 to remove"
    if any(d > 1 and s > 1 for d, s in zip(spec.dilation, spec.stride)):
        return "space-to-batch needs stride 1 along every dilated axis"
    if math.prod(spec.dilation) > MAX_PHASES:
        return (f"dilation={spec.dilation} has {math.prod(spec.dilation)} phases, more than {MAX_PHASES}: compile "
                "time grows with the number of phases")
    return None


def inner_spec(spec: ConvSpec) -> ConvSpec:
    """The undilated convolution run on the stacked phases."""
    d = spec.dilation
    # ceil: the input is zero-extended to a multiple
    phases = tuple(-(-p // di) for p, di in zip(padded_spatial(spec), d))
    return dataclasses.replace(
        spec, batch=spec.batch * math.prod(d), in_spatial=phases, dilation=(1,) * spec.ndim,
        padding=((0, 0),) * spec.ndim, padding_mode="zeros", lowering="auto", has_bias=False, batched=True)


def lower(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    from jconv import dispatch  # dispatch imports this module

    n, d = spec.ndim, spec.dilation
    inner = inner_spec(spec)
    extra = [q * di - p for q, di, p in zip(inner.in_spatial, d, padded_spatial(spec))]
    x = zero_pad(spec, x, extra_hi=extra)
    batch, c = spec.batch, spec.in_channels
    # Phases by strided slices, merged into the batch axis (batch-major). (A reshape that splits each spatial axis
    # into (P, d) does the same, but GSPMD then computed wrong gradients when that axis was unevenly sharded.)
    axes = spatial_axes(spec)
    phases = []
    for offsets in itertools.product(*(range(di) for di in d)):
        starts, strides = [0] * x.ndim, [1] * x.ndim
        for axis, r, di in zip(axes, offsets, d):
            starts[axis], strides[axis] = r, di
        phases.append(jax.lax.slice(x, starts, list(x.shape), strides))
    x = jnp.stack(phases, axis=1)  # (N, R, ...): batch-major, as the interleave below expects
    x = x.reshape(inner.batch, *x.shape[2:])

    y = dispatch.lower_inner(inner, x, w)

    q = inner.out_spatial
    co = spec.out_channels
    if spec.channels_last:
        # (N, d0, d1, ..., Q0, Q1, ..., C) -> (N, Q0, d0, Q1, d1, ..., C)
        y = y.reshape(batch, *d, *q, co)
        perm = (0, *[v for i in range(n) for v in (1 + n + i, 1 + i)], 2 * n + 1)
        y = y.transpose(perm).reshape(batch, *[qi * di for qi, di in zip(q, d)], co)
        crop = (slice(None), *[slice(0, o) for o in spec.out_spatial], slice(None))
    else:
        # (N, d0, d1, ..., C, Q0, Q1, ...) -> (N, C, Q0, d0, Q1, d1, ...)
        y = y.reshape(batch, *d, co, *q)
        perm = (0, 1 + n, *[v for i in range(n) for v in (2 + n + i, 1 + i)])
        y = y.transpose(perm).reshape(batch, co, *[qi * di for qi, di in zip(q, d)])
        crop = (slice(None), slice(None), *[slice(0, o) for o in spec.out_spatial])
    return y[crop]
