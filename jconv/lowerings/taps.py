"""Depthwise convolution as a sum over kernel taps of shifted, strided input slices times per-channel weights.

A depthwise conv (groups == C_in, any channel multiplier) does prod(k) multiply-adds per output element and no
channel mixing. XLA:CPU's feature_group_count path runs it 50-500x slower than this plain elementwise form,
which XLA fuses into one loop (docs/lowerings.md, "taps").

The derivatives are written by hand, because plain autodiff of the tap sum is slow on XLA:CPU in two ways:
- the input gradient becomes one padded copy per tap, and pads fused into a loop become per-element bounds
  checks. Here it is a tap sum over the stride-dilated output gradient with the flipped kernel: slices again.
- the weight gradient is one reduction per tap, and XLA:CPU's reductions run far slower per element than its
  elementwise loops (and slower still fused as siblings). Here (grad_weight_summed) each tap's products are
  first summed elementwise over blocks of the batch (or of output rows), one fused loop, and only a block's worth
  per tap goes to the reductions.
The rule is a custom_jvp: the input tangent map is the linear transpose of grad_input, and the weight tangent
map the linear transpose of the weight gradient's form, so reverse mode transposes them back into those forms,
and forward mode (jvp, jacfwd, hessian) still works.

Large kernels (more than MAX_UNROLLED_TAPS taps, with a leading spatial axis, e.g. RepLKNet's 31x31) take
two other forms:
- the sum runs as a loop over kernel rows with the taps of a row unrolled inside: one fused kernel per row
  instead of one small kernel per tap.
- the weight gradient is a banded matmul (grad_weight_banded): per kernel row, input tiles times output
  gradient tiles contracted over batch and rows, whose diagonals are the kernel row, for kernel rows of
  BANDED_MIN_ROW or more; shorter rows take the summed form.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jconv.lowerings.common import (
    accumulation_dtype, channel_axis, exact_for_nonfinite, input_grad_dilation, materialized, output_dtype,
    pad_spatial, padded_spatial, sharding_refusal, spatial_axes, tap_slice, transposed_refusal, with_tangent_terms,
    zero_pad)
from jconv.spec import ConvSpec

NAME = "taps"
DETERMINISTIC = True  # fixed sequences of elementwise ops and XLA reductions; no atomics
MAX_UNROLLED_TAPS = 64  # beyond this taps are summed in a loop: compile time grows with unrolling


def refusal(spec: ConvSpec) -> Optional[str]:
    if refusal := sharding_refusal(spec, ("channel", "spatial")) or transposed_refusal(spec):
        return refusal
    if not spec.is_depthwise:
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
    multiplier = spec.channel_multiplier
    return xs if multiplier == 1 else jnp.repeat(xs, multiplier, axis=channel_axis(spec))


def _taps(spec: ConvSpec):
    return list(itertools.product(*(range(k) for k in spec.kernel_size)))


def _stride_phases(spec: ConvSpec, x: jax.Array, extra_hi=None) -> jax.Array:
    """The zero-padded input with every spatial axis cut into its stride phases, stacked in a new leading axis.

    Phase p of an axis holds the padded positions m * stride + p, so the positions a tap meets for consecutive
    outputs are consecutive in one phase: a tap's slice is contiguous. Strided slices inside the weight
    gradient's reductions ran slower (docs/lowerings.md, "taps").
    """
    axes = spatial_axes(spec)
    extra_hi = extra_hi or (0,) * spec.ndim
    xp = zero_pad(spec, x, extra_hi=tuple(e + (-(p + e) % s) for p, s, e in zip(padded_spatial(spec), spec.stride,
                                                                                 extra_hi)))
    split, phase_axes = [], []
    for axis, size in enumerate(xp.shape):
        if axis in axes:
            s = spec.stride[axes.index(axis)]
            split += [size // s, s]
            phase_axes.append(len(split) - 1)
        else:
            split.append(size)
    xs = jnp.moveaxis(xp.reshape(split), phase_axes, range(spec.ndim))
    return xs.reshape(math.prod(spec.stride), *xs.shape[spec.ndim:])


def _tap_phase_and_starts(spec: ConvSpec, tap):
    """Where tap (a multi-index, static or traced) reads in _stride_phases: the phase, and per spatial axis the
    start of its slice in phase coordinates."""
    phase, starts = 0, []
    for t, d, s in zip(tap, spec.dilation, spec.stride):
        phase, starts = phase * s + (t * d) % s, starts + [(t * d) // s]
    return phase, starts


def _dynamic_tap_slice(spec: ConvSpec, phases: jax.Array, index) -> jax.Array:
    """The slice of _stride_phases that a traced tap index (row-major over the kernel) meets."""
    phase, tap_starts = _tap_phase_and_starts(spec, jnp.unravel_index(index, spec.kernel_size))
    starts = [phase] + [0] * (phases.ndim - 1)
    window = [1] + list(phases.shape[1:])
    for axis, start, o in zip(spatial_axes(spec), tap_starts, spec.out_spatial):
        starts[axis + 1], window[axis + 1] = start, o
    return lax.dynamic_slice(phases, starts, window)[0]


def _large_kernel_rows(spec: ConvSpec) -> bool:
    """Too many taps to unroll, but a kernel row (the taps along the last axis) is not: the large-kernel forms."""
    return (spec.ndim >= 2 and math.prod(spec.kernel_size) > MAX_UNROLLED_TAPS
            and spec.kernel_size[-1] <= MAX_UNROLLED_TAPS)


# Kernel rows at least this long take the banded weight gradient: it won at 31 and lost at 13-21 (docs/lowerings.md,
# "taps"; between 21 and 31 is unmeasured).
BANDED_MIN_ROW = 27


# The weight gradient's summed form (grad_weight_summed) loops over the leading kernel axes for kernels of more
# than SUMMED_LOOP_MIN_TAPS taps at stride 1, unrolls all taps of the others up to SUMMED_UNROLLED_TAPS, and
# leaves strided kernels of more taps to the per-tap loop (see weight_grad_form).
SUMMED_LOOP_MIN_TAPS = 16
SUMMED_UNROLLED_TAPS = 27


def weight_grad_form(spec: ConvSpec) -> str:
    """The rule for the weight gradient's form: "summed" (unrolled), "summed-loop", "banded" or "per-tap-loop".

    The summed form beat the per-tap loop except on strided kernels of many taps; the loop form beat the unrolled
    one at stride 1 from 5x5 up (docs/lowerings.md, "taps", for the measurements and their caveat: they were
    taken with glibc's default malloc, so scratch over its mmap threshold also cost page faults).
    """
    if (_large_kernel_rows(spec) and spec.kernel_size[-1] >= BANDED_MIN_ROW
            and "batch" not in spec.explicit_sharding):  # banded moves the batch into a matmul's contraction
        return "banded"
    taps, stride_1 = math.prod(spec.kernel_size), max(spec.stride) == 1
    if spec.ndim >= 2 and stride_1 and taps > SUMMED_LOOP_MIN_TAPS and spec.kernel_size[-1] <= MAX_UNROLLED_TAPS:
        return "summed-loop"
    if taps <= SUMMED_UNROLLED_TAPS or (spec.ndim == 1 and stride_1 and taps <= MAX_UNROLLED_TAPS):
        return "summed"
    return "per-tap-loop"


def variants(spec: ConvSpec) -> Tuple[str, ...]:
    """The weight-gradient forms that can run for `spec`, weight_grad_form's choice first: each form's limits
    are what it unrolls (compile time), the loop form's stride 1, and banded's unsliceable sharded batch."""
    taps, lead_taps = math.prod(spec.kernel_size), math.prod(spec.kernel_size[:-1])
    row_fits = spec.ndim >= 2 and spec.kernel_size[-1] <= MAX_UNROLLED_TAPS
    possible = {
        "summed": taps <= MAX_UNROLLED_TAPS,
        "summed-loop": row_fits and max(spec.stride) == 1,
        "banded": row_fits and lead_taps <= MAX_UNROLLED_TAPS and "batch" not in spec.explicit_sharding,
        "per-tap-loop": True,
    }
    rule = weight_grad_form(spec)
    return (rule, *(form for form, ok in possible.items() if ok and form != rule))


def _out_shape(spec: ConvSpec, x: jax.Array) -> list:
    shape = list(x.shape)
    for axis, o in zip(spatial_axes(spec), spec.out_spatial):
        shape[axis] = o
    shape[channel_axis(spec)] = spec.out_channels
    return shape


def _weights_by_tap(spec: ConvSpec, w: jax.Array) -> jax.Array:
    """w as (out_channels, taps) in the accumulation dtype, taps row-major (the order of _taps); channels-last,
    stored taps-major, so that a tap's channel weights are contiguous where the tap loops read them.

    Channels-last, a tap's weights broadcast along the innermost (channel) axis; read from w's own layout they
    are a strided gather per vector of outputs, and XLA:CPU fuses a plain transpose into the loop and reads w that
    way anyway, several times slower (docs/lowerings.md, "taps"). Channels-first a tap's weight is one scalar per
    channel for whole rows of outputs, read where it is."""
    w_taps = w.reshape(spec.out_channels, -1).astype(accumulation_dtype(spec))
    return materialized(w_taps.T).T if spec.channels_last else w_taps


def _sum_of_row(spec: ConvSpec, rows: jax.Array, w_row: jax.Array, acc: jax.Array) -> jax.Array:
    """acc + sum over the last axis's taps of rows' slices times w_row[:, j] (rows: leading axes already cut)."""
    axis = spatial_axes(spec)[-1]
    d, o, s = spec.dilation[-1], spec.out_spatial[-1], spec.stride[-1]
    bshape = _broadcast_shape(spec, spec.out_channels)
    for j in range(spec.kernel_size[-1]):
        xs = lax.slice_in_dim(rows, j * d, j * d + (o - 1) * s + 1, s, axis)
        acc = acc + _expand_channels(spec, xs).astype(acc.dtype) * w_row[:, j].reshape(bshape)
    return acc


def forward(spec: ConvSpec, x: jax.Array, w: jax.Array, *, loop: bool = False) -> jax.Array:
    """sum_t slice_t(x) * w[:, t], accumulated in at least float32; unrolled, or a loop over taps or rows."""
    acc_dtype = accumulation_dtype(spec)
    taps = _taps(spec)
    w_taps = _weights_by_tap(spec, w)
    bshape = _broadcast_shape(spec, spec.out_channels)
    if not loop and len(taps) <= MAX_UNROLLED_TAPS:
        xp = zero_pad(spec, x)
        acc = None
        for index, tap in enumerate(taps):
            term = _expand_channels(spec, tap_slice(spec, xp, tap)).astype(acc_dtype) * \
                w_taps[:, index].reshape(bshape)
            acc = term if acc is None else acc + term
        return acc.astype(output_dtype(spec))

    if not loop and _large_kernel_rows(spec):
        xp = zero_pad(spec, x)
        lead_axes = spatial_axes(spec)[:-1]
        lead_kernel = spec.kernel_size[:-1]
        w_rows = w_taps.reshape(spec.out_channels, math.prod(lead_kernel), spec.kernel_size[-1])

        def row(index, acc):
            starts = [0] * xp.ndim
            window = list(xp.shape)
            strides = [1] * xp.ndim
            for axis, t, d, o, s in zip(lead_axes, jnp.unravel_index(index, lead_kernel), spec.dilation,
                                        spec.out_spatial, spec.stride):
                starts[axis], window[axis], strides[axis] = t * d, (o - 1) * s + 1, s
            rows = lax.slice(lax.dynamic_slice(xp, starts, window), [0] * xp.ndim, window, strides)
            return _sum_of_row(spec, rows, lax.dynamic_index_in_dim(w_rows, index, 1, keepdims=False), acc)

        acc = lax.fori_loop(0, math.prod(lead_kernel), row, jnp.zeros(_out_shape(spec, x), acc_dtype))
        return acc.astype(output_dtype(spec))

    phases = _stride_phases(spec, x)

    # Rematerialized: when this loop is transposed (the weight gradient), each step re-slices the input
    # instead of JAX saving every tap's slice, a prod(k)-fold copy of the input.
    @jax.checkpoint
    def body(index, acc):
        xs = _expand_channels(spec, _dynamic_tap_slice(spec, phases, index)).astype(acc_dtype)
        return acc + xs * lax.dynamic_index_in_dim(w_taps, index, axis=1, keepdims=False).reshape(bshape)

    return lax.fori_loop(0, len(taps), body, jnp.zeros(_out_shape(spec, x), acc_dtype)).astype(output_dtype(spec))


# --- the two gradients, in their fast forms -----------------------------------------------------------------


def _dilated_output_grad_config(spec: ConvSpec) -> list:
    """lax.pad config of the output gradient for grad_input's correlation (one per spatial axis)."""
    # input_grad_dilation's padding gives the gradient w.r.t. the padded input; trimmed here by the spec's own
    # padding (negative pads crop) so that only the unpadded input's gradient is computed, and the padded
    # gradient buffer is no larger than needed (its size counts on CPU: docs/performance.md, "The allocator").
    return [(lo - pad_lo, hi - pad_hi, interior) for (lo, hi, interior), (pad_lo, pad_hi)
            in zip(input_grad_dilation(spec), spec.lowering_padding)]


def _dilated_output_grad(spec: ConvSpec, g: jax.Array) -> jax.Array:
    return pad_spatial(spec, g, _dilated_output_grad_config(spec))


def grad_input(spec: ConvSpec, w: jax.Array, g: jax.Array) -> jax.Array:
    """d(sum y*g)/dx: the output gradient, dilated by the stride, correlated with the flipped kernel."""
    axes = spatial_axes(spec)
    # With a channel multiplier m, input channel c collects output channels c*m .. c*m + m-1: one depthwise tap
    # sum per j < m over the channel-strided slices g[:, j::m] (each padded on its own, so that no padded copy
    # of g is sliced again) and w[j::m], added elementwise. One tap sum over all channels followed by a reduction
    # over the multiplier axis made XLA:CPU materialize every tap's slice of the padded gradient, many times
    # slower (docs/lowerings.md, "taps").
    c, multiplier = spec.in_channels, spec.channel_multiplier
    g_slices = [g] if multiplier == 1 else [lax.slice_in_dim(g, j, None, multiplier, axis=channel_axis(spec))
                                            for j in range(multiplier)]
    g_dilated = [_dilated_output_grad(spec, g_j) for g_j in g_slices]
    flipped = dataclasses.replace(
        spec, in_channels=c, out_channels=c, groups=c, in_spatial=tuple(g_dilated[0].shape[a] for a in axes),
        stride=(1,) * spec.ndim, padding=((0, 0),) * spec.ndim, padding_mode="zeros", preferred_element_type=None,
        dtype=jnp.dtype(g.dtype))
    w_flipped = jnp.flip(w, axis=tuple(range(2, 2 + spec.ndim)))
    return functools.reduce(jnp.add, [forward(flipped, g_j, lax.slice_in_dim(w_flipped, j, None, multiplier, axis=0))
                                      for j, g_j in enumerate(g_dilated)])


# The weight gradient sums each tap's products elementwise over this many blocks (of the batch, then of the
# leading output axis) before reducing what is left (see grad_weight_summed).
SUMMED_BLOCKS = 8


class _Blocks(NamedTuple):
    """How grad_weight_summed cuts the products: batch_blocks x row_blocks blocks of batch_size samples and
    row_size leading output positions; the batch and rows are zero-extended by extra_batch and extra_rows."""
    batch_blocks: int
    row_blocks: int
    batch_size: int
    row_size: int
    extra_batch: int
    extra_rows: int


def _summing_blocks(spec: ConvSpec, batch: int) -> _Blocks:
    rows = spec.out_spatial[0]
    # Batch blocks ran faster than row blocks (docs/lowerings.md, "taps"), but a batch sharded over an Explicit
    # mesh axis cannot be sliced: then the rows alone are cut.
    batch_blocks = 1 if "batch" in spec.explicit_sharding else min(batch, SUMMED_BLOCKS)
    row_blocks = min(rows, max(1, SUMMED_BLOCKS // batch_blocks))
    batch_size, row_size = -(-batch // batch_blocks), -(-rows // row_blocks)
    return _Blocks(batch_blocks, row_blocks, batch_size, row_size, batch_blocks * batch_size - batch,
                   row_blocks * row_size - rows)


def _block_sum(spec: ConvSpec, blocks: _Blocks, a: jax.Array, b: jax.Array) -> jax.Array:
    """sum over the blocks (of the batch, and of the leading spatial axis where there are row blocks) of a * b."""
    row_axis = spatial_axes(spec)[0]
    total = None
    for i, r in itertools.product(range(blocks.batch_blocks), range(blocks.row_blocks)):
        def block(v):
            v = lax.slice_in_dim(v, i * blocks.batch_size, (i + 1) * blocks.batch_size, axis=0)
            if blocks.row_blocks == 1:
                return v
            return lax.slice_in_dim(v, r * blocks.row_size, (r + 1) * blocks.row_size, axis=row_axis)
        term = block(a) * block(b)
        total = term if total is None else total + term
    return total


def _reduce_taps(spec: ConvSpec, sums: jax.Array) -> jax.Array:
    """The stacked per-tap sums (taps first) reduced to (out_channels, taps)."""
    ca = channel_axis(spec) + 1
    return jnp.sum(sums, axis=tuple(a for a in range(sums.ndim) if a not in (0, ca))).T


def grad_weight_summed(spec: ConvSpec, x: jax.Array, g: jax.Array, *, loop: bool = False) -> jax.Array:
    """d(sum y*g)/dw: per tap, the products summed elementwise over blocks first, then one reduction.

    The products slice_t(x) * g are cut into SUMMED_BLOCKS blocks along the batch (and, for small batches, the
    leading output axis) and the blocks added elementwise: XLA:CPU fuses that into one loop like the forward's
    tap sum, and only a block's worth of sums per tap is left to its (much slower) reductions. Unrolled over all
    taps (from the padded output gradient where that is possible, else from the input's stride phases), or
    (loop=True) a loop over the leading kernel axes with the last axis's taps unrolled.
    """
    blocks = _summing_blocks(spec, x.shape[0])
    if not loop and _reads_the_padded_output_grad(spec, blocks):
        grads = _summed_from_padded_output_grad(spec, blocks, x, g)
    elif not loop:
        grads = _summed_unrolled(spec, blocks, x, g)
    else:
        grads = _summed_loop(spec, blocks, x, g)
    return grads.reshape(spec.out_channels, 1, *spec.kernel_size)


def _summed_from_padded_output_grad(spec: ConvSpec, blocks: _Blocks, x: jax.Array, g: jax.Array) -> jax.Array:
    """Tap t's products x_padded[o + t*d] * g[o], indexed by input position i = o + t*d - pad instead: x[i] times
    the slice of grad_input's padded output gradient that starts at reach - t*d. XLA computes that padded
    gradient once for both gradients, and the padded input is then dead once the forward is done."""
    acc_dtype = accumulation_dtype(spec)
    g_padded = _dilated_output_grad(spec, g)
    xs = x.astype(acc_dtype)
    sums = []
    for tap in _taps(spec):
        gs = g_padded
        for axis, t, d, k, size in zip(spatial_axes(spec), tap, spec.dilation, spec.kernel_size,
                                       spec.lowering_in_spatial):
            start = d * (k - 1) - t * d
            gs = lax.slice_in_dim(gs, start, start + size, axis=axis)
        sums.append(_block_sum(spec, blocks, _read_by_tap(spec, xs, tap), gs.astype(acc_dtype)))
    return _reduce_taps(spec, jnp.stack(sums))


def _phases_and_extended_grad(spec: ConvSpec, blocks: _Blocks, x: jax.Array, g: jax.Array):
    """The input's stride phases and g, both zero-extended to whole blocks, and the window per spatial axis (in
    phase coordinates) that a tap's slice covers."""
    if blocks.extra_batch:
        x = jnp.pad(x, [(0, blocks.extra_batch)] + [(0, 0)] * (x.ndim - 1))
    phases = _stride_phases(spec, x, extra_hi=(blocks.extra_rows * spec.stride[0],) + (0,) * (spec.ndim - 1))
    g_pad = [(0, 0)] * g.ndim
    g_pad[0], g_pad[spatial_axes(spec)[0]] = (0, blocks.extra_batch), (0, blocks.extra_rows)
    g = jnp.pad(g.astype(accumulation_dtype(spec)), g_pad)
    windows = (blocks.row_blocks * blocks.row_size,) + spec.out_spatial[1:]
    return phases, g, windows


def _summed_products(spec: ConvSpec, blocks: _Blocks, xs: jax.Array, g: jax.Array) -> jax.Array:
    """sum over blocks of xs * g (xs: the input slice a tap meets, shaped like the extended g)."""
    if blocks.extra_rows:  # rows past the output meet g's zero rows: zeroed, so that a NaN or inf there stays out
        row_axis, rows = spatial_axes(spec)[0], spec.out_spatial[0]
        xs = jnp.where(lax.broadcasted_iota(jnp.int32, xs.shape, row_axis) < rows, xs, jnp.zeros((), xs.dtype))
    return _block_sum(spec, blocks, _expand_channels(spec, xs).astype(accumulation_dtype(spec)), g)


def _summed_unrolled(spec: ConvSpec, blocks: _Blocks, x: jax.Array, g: jax.Array) -> jax.Array:
    phases, g, windows = _phases_and_extended_grad(spec, blocks, x, g)
    sums = []
    for tap in _taps(spec):
        phase, starts = _tap_phase_and_starts(spec, tap)
        xs = phases[phase]
        for axis, start, window in zip(spatial_axes(spec), starts, windows):
            xs = lax.slice_in_dim(xs, start, start + window, axis=axis)
        sums.append(_summed_products(spec, blocks, xs, g))
    return _reduce_taps(spec, jnp.stack(sums))


def _summed_loop(spec: ConvSpec, blocks: _Blocks, x: jax.Array, g: jax.Array) -> jax.Array:
    """The loop form, at stride 1 (weight_grad_form takes it only there): over the leading kernel axes, with the
    last axis's taps unrolled. Rematerialized, so that transposing the loop re-slices the input per step instead
    of saving every tap's slice."""
    if max(spec.stride) != 1:
        raise ValueError(f"grad_weight_summed: the loop form needs stride 1, got {spec.stride}")
    phases, g, windows = _phases_and_extended_grad(spec, blocks, x, g)
    xp, axes = phases[0], spatial_axes(spec)
    lead_kernel, kw, d_last = spec.kernel_size[:-1], spec.kernel_size[-1], spec.dilation[-1]

    @jax.checkpoint
    def row(index, acc):
        begin, size = [0] * xp.ndim, list(xp.shape)
        for axis, t, d, window in zip(axes[:-1], jnp.unravel_index(index, lead_kernel), spec.dilation, windows):
            begin[axis], size[axis] = t * d, window
        rows = lax.dynamic_slice(xp, begin, size)
        sums = [_summed_products(spec, blocks, lax.slice_in_dim(rows, j * d_last, j * d_last + windows[-1],
                                                                axis=axes[-1]), g) for j in range(kw)]
        return lax.dynamic_update_index_in_dim(acc, _reduce_taps(spec, jnp.stack(sums)), index, axis=1)

    return lax.fori_loop(0, math.prod(lead_kernel), row,
                         jnp.zeros((spec.out_channels, math.prod(lead_kernel), kw), accumulation_dtype(spec)))


def _read_by_tap(spec: ConvSpec, x: jax.Array, tap) -> jax.Array:
    """x (unpadded, stride 1) with the positions that `tap` never reads for any output set to zero.

    The padded-output-gradient form multiplies every input position by the output gradient's padding where the
    tap lands outside the output; 0 * NaN and 0 * inf are NaN, so a non-finite input there would reach a weight
    gradient that lax and torch leave finite. A select on positions (fused into the products' loop) leaves
    those products 0 * 0."""
    keep = None
    for axis, t, d, (lo, _), o, size in zip(spatial_axes(spec), tap, spec.dilation, spec.lowering_padding,
                                            spec.out_spatial, spec.lowering_in_spatial):
        first, stop = max(0, t * d - lo), min(size, t * d - lo + o)  # inputs i = o' + t*d - lo for outputs o'
        if first == 0 and stop == size:
            continue
        position = lax.broadcasted_iota(jnp.int32, x.shape, axis)
        inside = (position >= first) & (position < stop)
        keep = inside if keep is None else keep & inside
    return x if keep is None else jnp.where(keep, x, jnp.zeros((), x.dtype))


# At stride 1, without a channel multiplier, the unrolled summed weight gradient reads the padded output gradient
# that grad_input builds instead of the padded input that the forward builds: one buffer fewer live in the
# forward+backward, which kept MobileNet's scratch under glibc's mmap threshold (docs/lowerings.md, "taps"). Only
# where the blocks are whole batch slices (no row blocks, no ragged batch) and grad_input's padding crops nothing
# (padding at most the kernel's reach on each side).
def _reads_the_padded_output_grad(spec: ConvSpec, blocks: _Blocks) -> bool:
    if max(spec.stride) != 1 or spec.out_channels != spec.in_channels or blocks.row_blocks != 1 or blocks.extra_batch:
        return False
    return all(lo >= 0 and hi >= 0 for lo, hi, _ in _dilated_output_grad_config(spec))


def grad_weight_banded(spec: ConvSpec, x: jax.Array, g: jax.Array) -> jax.Array:
    """d(sum y*g)/dw for large kernels (_large_kernel_rows), as one batched matmul per leading tap.

    Along the last spatial axis the outputs are cut into tiles of `tile` positions, and the inputs into the
    overlapping tiles they read. For each leading tap (a kernel row in 2-D), input tiles times output-gradient
    tiles, contracted over the batch and the leading output positions, give per channel and tile a
    (span x tile) matrix whose entry (w * stride + j * dilation, w) summed over w and tiles is the weight
    gradient of tap j of that row. XLA runs those as dense matmuls instead of one reduction per tap.
    """
    acc_dtype = accumulation_dtype(spec)
    kw, d, s, o = spec.kernel_size[-1], spec.dilation[-1], spec.stride[-1], spec.out_spatial[-1]
    tile = min(o, kw)  # output positions per tile: inputs read per tile are at most ~2x the kernel's reach
    n_tiles = -(-o // tile)
    step = tile * s  # input positions between the starts of consecutive tiles
    span = (tile - 1) * s + (kw - 1) * d + 1  # input positions one tile reads
    copies = -(-span // step)  # shifted block views whose concatenation covers a span

    axes = spatial_axes(spec)
    extra = (0,) * (spec.ndim - 1) + (max(0, (n_tiles + copies - 1) * step - padded_spatial(spec)[-1]),)
    xp = _expand_channels(spec, zero_pad(spec, x, extra_hi=extra)).astype(acc_dtype)
    # (C, *leading spatial, N, last spatial): channels batch the matmuls; leading spatial and N are contracted.
    perm = (channel_axis(spec), *axes[:-1], 0, axes[-1])
    xc = jnp.transpose(xp, perm)
    blocks = [lax.slice_in_dim(xc, q * step, q * step + n_tiles * step, axis=xc.ndim - 1)
              .reshape(*xc.shape[:-1], n_tiles, step) for q in range(copies)]
    x_tiles = jnp.moveaxis(jnp.concatenate(blocks, axis=-1)[..., :span], -2, 1)  # (C, tiles, *lead, N, span)
    gc = jnp.transpose(g, perm).astype(acc_dtype)
    gc = jnp.pad(gc, [(0, 0)] * (gc.ndim - 1) + [(0, n_tiles * tile - o)])
    g_tiles = jnp.moveaxis(gc.reshape(*gc.shape[:-1], n_tiles, tile), -2, 1)  # (C, tiles, *lead out, N, tile)

    n_lead = spec.ndim - 1
    contract = tuple(range(2, 3 + n_lead))
    tap_rows = np.arange(tile)[None, :] * s + np.arange(kw)[:, None] * d  # (kw, tile): input offset in a tile
    tap_cols = np.broadcast_to(np.arange(tile)[None, :], (kw, tile))
    real_output = (np.arange(n_tiles)[:, None, None] * tile + tap_cols[None]) < o  # (tiles, kw, tile)
    rows = []
    for lead_tap in itertools.product(*(range(k) for k in spec.kernel_size[:-1])):
        start, limit, strides = [0] * x_tiles.ndim, list(x_tiles.shape), [1] * x_tiles.ndim
        for a, t, dd, oo, ss in zip(range(2, 2 + n_lead), lead_tap, spec.dilation, spec.out_spatial, spec.stride):
            start[a], limit[a], strides[a] = t * dd, t * dd + (oo - 1) * ss + 1, ss
        products = lax.dot_general(lax.slice(x_tiles, start, limit, strides), g_tiles,
                                   ((contract, contract), ((0, 1), (0, 1))), precision=lax.Precision.HIGHEST,
                                   preferred_element_type=acc_dtype)  # (C, tiles, span, tile)
        # Outputs past o in the last tile are g's zero padding: their products are dropped, not added (0 * NaN).
        on_diagonal = jnp.where(real_output, products[:, :, tap_rows, tap_cols], jnp.zeros((), products.dtype))
        rows.append(on_diagonal.sum(axis=(1, 3)))  # (C, kw)
    return jnp.stack(rows, axis=1).reshape(spec.out_channels, 1, *spec.kernel_size)


# --- wiring -------------------------------------------------------------------------------------------------


def _tangent_terms(spec, x, w, tx, tw):
    # The x-tangent map is the transpose of grad_input, so reverse mode transposes it back into grad_input.
    # grad_input multiplies every weight by the dilated output gradient's padding, so an inf or NaN weight would
    # put NaNs where lax and torch have none; then the transpose of the tap sum itself runs instead (it adds the
    # padding rather than multiplying by it). Both branches are elementwise, the only work XLA:CPU runs well inside
    # lax.cond (docs/lowerings.md, "taps").
    def exact_grad_input(g):
        return jax.vjp(lambda x_: forward(spec, x_, w), x)[1](g.astype(output_dtype(spec)))[0].astype(x.dtype)

    fast_grad_input = lambda g: grad_input(spec, w, g).astype(x.dtype)
    parts, direct = [(tx, exact_for_nonfinite(fast_grad_input, exact_grad_input, w))], []
    form = spec.variant or weight_grad_form(spec)
    if form == "per-tap-loop":
        # conv is linear in w: the tangent is conv(x, tw). In the loop form, its transpose is one
        # reduction per tap, one after another.
        if not isinstance(tw, SymbolicZero):
            direct.append(forward(spec, x, tw, loop=True))
    else:
        # The tangent map whose transpose is the weight gradient in its chosen form.
        grad_weight = grad_weight_banded if form == "banded" else functools.partial(
            grad_weight_summed, loop=form == "summed-loop")
        parts.append((tw, lambda g: grad_weight(spec, x, g).astype(w.dtype)))
    return parts, direct


_depthwise = with_tangent_terms(forward, _tangent_terms)
