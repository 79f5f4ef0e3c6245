"""Dilated convolution by space-to-batch: a dilation-d conv is a dense conv on d^N interleaved sub-images.

With stride 1 along a dilated axis, output o = q*d + r only reads inputs i = (q + t)*d + r: phase r of the
output is an undilated conv of phase r of the input. So the (zero-padded) input is split into its phases, the
phases are stacked on the batch axis, ONE undilated convolution runs (chosen by dispatch like any other, so the
dense kernels' fast forward and backward are used), and the phases are interleaved back. Only reshapes and
transposes surround the conv: no gathers, no scatters.

XLA lowers dilated convs' backward passes many times slower than their forward on GPU, because it materializes
them as padded convs; this form never asks XLA for a dilated conv (docs/lowerings.md, "dilated").
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from jconv.lowerings import lower_inner, xla
from jconv.lowerings.common import (
    MAX_PHASES, interleave_phases, padded_spatial, sharding_refusal, spatial_axes, transposed_refusal,
    with_exact_fallback, zero_pad)
from jconv.spec import ConvSpec

NAME = "dilated"
DETERMINISTIC = True  # reshapes around whichever deterministic lowering runs the inner conv


def variants(spec: ConvSpec) -> Tuple[str, ...]:
    return ("default",)


def refusal(spec: ConvSpec) -> Optional[str]:
    if refusal := sharding_refusal(spec) or transposed_refusal(spec):
        return refusal
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


def _space_to_batch(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    d = spec.dilation
    inner = inner_spec(spec)
    extra = [q * di - p for q, di, p in zip(inner.in_spatial, d, padded_spatial(spec))]
    x = zero_pad(spec, x, extra_hi=extra)
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
    y = lower_inner(inner, x, w)
    return interleave_phases(spec, y, d, inner.out_spatial, phases_first=False)


# The inner conv runs over the phases zero-extended to a multiple of the dilation, and computes outputs past the
# real ones: a NaN or inf operand would meet those zeros (docs/semantics.md, "Non-finite values"). Then lax runs.
lower = with_exact_fallback(_space_to_batch, xla.lower)
