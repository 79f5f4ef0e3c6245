"""Depthwise convolution as a sum over kernel taps of shifted, strided input slices times per-channel weights.

A depthwise conv (groups == C_in, any channel multiplier) does prod(k) multiply-adds per output element and no
channel mixing. XLA:CPU's feature_group_count path runs it 50-500x slower than this plain elementwise form,
which XLA fuses into one loop (benchmarks/results/cpu.md).

The derivatives are written by hand, because plain autodiff of the tap sum is slow on XLA:CPU in two ways
(development probes on 8x96x56x56, 7x7; the benchmark run is benchmarks/results/cpu.md):
- the input gradient becomes one padded copy per tap; pads fused into a loop become per-element bounds checks,
  ~9x slower than the same sum written with slices. Here it is a tap sum over the stride-dilated output gradient
  with the flipped kernel: slices again.
- the weight gradient is one reduction per tap; XLA fuses the sibling reductions (they share the output
  gradient) into one kernel that runs ~4x slower than the reductions one at a time. Here the weight tangent is
  the tap sum written as a (rematerialized) loop over taps, whose transpose is one reduction per loop step.
The rule is a custom_jvp: the input tangent map is the linear transpose of grad_input, so reverse mode
transposes it back into grad_input, and forward mode (jvp, jacfwd, hessian) still works.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jconv.lowerings.common import (
    accumulation_dtype, channel_axis, input_grad_dilation, output_dtype, spatial_axes, tap_slice, zero_pad)
from jconv.spec import ConvSpec

NAME = "taps"
DETERMINISTIC = True  # fixed sequences of elementwise ops and XLA reductions; no atomics
MAX_UNROLLED_TAPS = 64  # beyond this taps are summed in a loop: compile time grows with unrolling


def accepts(spec: ConvSpec):
    if set(spec.explicit_sharding) & {'channel', 'spatial'}:
        return f"pads, slices or reshapes axes ({', '.join(spec.explicit_sharding)}) sharded over an Explicit mesh axis"
    if spec.transposed:
        return "transposed convolutions are not tap sums here (see the xla lowering)"
    if spec.in_per_group != 1:
        return f"needs a depthwise conv (groups == in_channels), but in_channels/groups = {spec.in_per_group}"
    return None


def lower(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    return _depthwise(spec, x, w)


# --- forward ------------------------------------------------------------------------------------------------


def _broadcast_shape(spec: ConvSpec, channels: int) -> list:
    shape = [1] * (spec.ndim + 2)
    shape[channel_axis(spec)] = channels
    return shape


def _expand_channels(spec: ConvSpec, xs: jax.Array) -> jax.Array:
    """Depthwise with multiplier m: output channel c*m + j reads input channel c."""
    multiplier = spec.out_channels // spec.in_channels
    return xs if multiplier == 1 else jnp.repeat(xs, multiplier, axis=channel_axis(spec))


def _taps(spec: ConvSpec):
    return list(itertools.product(*(range(k) for k in spec.kernel_size)))


def _dynamic_tap_slice(spec: ConvSpec, xp: jax.Array, index) -> jax.Array:
    """tap_slice for a traced tap index (row-major over the kernel), on an already padded input."""
    axes = spatial_axes(spec)
    starts = [0] * xp.ndim
    window = list(xp.shape)
    strides = [1] * xp.ndim
    rem = index
    for axis, k, d, o, s in reversed(list(zip(axes, spec.kernel_size, spec.dilation, spec.out_spatial,
                                              spec.stride))):
        starts[axis] = (rem % k) * d
        rem = rem // k
        window[axis] = (o - 1) * s + 1
        strides[axis] = s
    xs = lax.dynamic_slice(xp, starts, window)
    return lax.slice(xs, [0] * xp.ndim, window, strides)


def forward(spec: ConvSpec, x: jax.Array, w: jax.Array, *, loop: bool = False) -> jax.Array:
    """sum_t slice_t(x) * w[:, t], accumulated in at least float32; unrolled, or a loop over taps."""
    acc_dtype = accumulation_dtype(spec)
    xp = zero_pad(spec, x)
    taps = _taps(spec)
    w_taps = w.reshape(spec.out_channels, len(taps)).astype(acc_dtype)  # row-major, the order of `taps`
    bshape = _broadcast_shape(spec, spec.out_channels)
    if not loop and len(taps) <= MAX_UNROLLED_TAPS:
        acc = None
        for index, tap in enumerate(taps):
            term = _expand_channels(spec, tap_slice(spec, xp, tap)).astype(acc_dtype) * \
                w_taps[:, index].reshape(bshape)
            acc = term if acc is None else acc + term
        return acc.astype(output_dtype(spec))

    # Rematerialized: when this loop is transposed (the weight gradient), each step re-slices the input
    # instead of JAX saving every tap's slice, a prod(k)-fold copy of the input.
    @jax.checkpoint
    def body(index, acc):
        xs = _expand_channels(spec, _dynamic_tap_slice(spec, xp, index)).astype(acc_dtype)
        return acc + xs * lax.dynamic_index_in_dim(w_taps, index, axis=1, keepdims=False).reshape(bshape)

    out_shape = list(xp.shape)
    for axis, o in zip(spatial_axes(spec), spec.out_spatial):
        out_shape[axis] = o
    out_shape[channel_axis(spec)] = spec.out_channels
    return lax.fori_loop(0, len(taps), body, jnp.zeros(out_shape, acc_dtype)).astype(output_dtype(spec))


# --- the two gradients, in their fast forms -----------------------------------------------------------------


def grad_input(spec: ConvSpec, w: jax.Array, g: jax.Array) -> jax.Array:
    """d(sum y*g)/dx: the output gradient, dilated by the stride, correlated with the flipped kernel."""
    axes = spatial_axes(spec)
    config = [(0, 0, 0)] * g.ndim
    for axis, pads in zip(axes, input_grad_dilation(spec)):
        config[axis] = pads
    g_dilated = lax.pad(g, jnp.zeros((), g.dtype), config)
    c = spec.out_channels
    flipped = dataclasses.replace(
        spec, in_channels=c, groups=c, in_spatial=tuple(g_dilated.shape[a] for a in axes), stride=(1,) * spec.ndim,
        padding=((0, 0),) * spec.ndim, padding_mode="zeros", preferred_element_type=None,
        dtype=jnp.dtype(g.dtype))
    gx = forward(flipped, g_dilated, jnp.flip(w, axis=tuple(range(2, 2 + spec.ndim))))
    multiplier = spec.out_channels // spec.in_channels
    if multiplier > 1:
        ca = channel_axis(spec)
        gx = gx.reshape(*gx.shape[:ca], spec.in_channels, multiplier, *gx.shape[ca + 1:]).sum(axis=ca + 1)
    crop = [slice(None)] * gx.ndim
    for axis, i, (lo, _) in zip(axes, spec.lowering_in_spatial, spec.lowering_padding):
        crop[axis] = slice(lo, lo + i)
    return gx[tuple(crop)]


# --- wiring -------------------------------------------------------------------------------------------------


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _depthwise(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    return forward(spec, x, w)


def _depthwise_jvp(spec, primals, tangents):
    x, w = primals
    tx, tw = tangents
    y = forward(spec, x, w)
    # The example carries y's full type, including a sharding in explicit-sharding meshes, so that the
    # transposed function's cotangent type matches the tangent's.
    g_example = jax.ShapeDtypeStruct(y.shape, y.dtype, sharding=getattr(jax.typeof(y), "sharding", None))
    # The x-tangent map is the transpose of grad_input, so reverse mode transposes it back into grad_input.
    parts = []
    if not isinstance(tx, SymbolicZero):
        (t,) = jax.linear_transpose(lambda g: grad_input(spec, w, g).astype(x.dtype), g_example)(tx)
        parts.append(t)
    if not isinstance(tw, SymbolicZero):
        # conv is linear in w: the tangent is conv(x, tw). In the loop form, its transpose is one reduction
        # per tap, one after another.
        parts.append(forward(spec, x, tw, loop=True))
    tangent = functools.reduce(jnp.add, parts) if parts else jnp.zeros_like(y)
    return y, tangent.astype(y.dtype)


_depthwise.defjvp(_depthwise_jvp, symbolic_zeros=True)
