"""Transposed convolution by phase (sub-pixel) decomposition: s^N ordinary convolutions, never over zeros.

The textbook lowering convolves an input with (s-1) zeros inserted between elements (lhs_dilation); XLA then
spends most of its time on those zeros, and its gradient is worse (docs/lowerings.md, "phase").

Along one axis, output position m = c + s*v (phase c = 0..s-1) only receives kernel taps t with
t*d = (c + p) mod s (mod s). Those taps form a sub-kernel with dilation d / gcd(d, s), and phase c is an ordinary
stride-1 correlation of the original input with that sub-kernel, reversed, over a window shifted by a per-phase
offset. N-D phases are products of per-axis phases. Each phase conv goes through dispatch like any forward conv
(so grouped and depthwise ones use their fast lowerings); the phases are interleaved back with one stack,
transpose and reshape, and the result cropped to the output size. No scatter, no gathers. Ungrouped convs with
few input channels compute each phase as one matmul over its taps and a sum of shifted products instead (see
MATMUL_FORWARD_MAX_IN_CHANNELS below). The gradients (ungrouped convs) are two matmuls over the output gradient's
strided slices (see GEMM_GRAD_MAX_EXPANSION below); for grouped ones, autodiff of the phase form: slices, pads and
the phase convs' own fast gradients.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jconv.lowerings import lower_inner, xla
from jconv.lowerings.common import (
    MAX_PHASES, accumulation_dtype, interleave_phases, output_dtype, sharding_refusal, spatial_axes,
    with_exact_fallback, with_tangent_terms)
from jconv.spec import ConvSpec

NAME = "phase"
DETERMINISTIC = True  # reshapes around deterministic forward lowerings


class AxisPhase(NamedTuple):
    taps: Tuple[int, ...]  # kernel taps in correlation order
    dilation: int
    start: int  # input slice [start, stop) along the axis
    stop: int
    pad: Tuple[int, int]  # zeros added around the slice


def refusal(spec: ConvSpec) -> Optional[str]:
    if refusal := sharding_refusal(spec):
        return refusal
    if not spec.transposed:
        return "phase decomposition is for transposed convolutions"
    if math.prod(spec.stride) > MAX_PHASES:
        return (f"stride={spec.stride} has {math.prod(spec.stride)} phases, more than {MAX_PHASES}: compile time "
                "grows with the number of phases")
    return None


def tap_landings(k: int, s: int, d: int, p: int) -> Tuple[Tuple[int, int], ...]:
    """Per kernel tap t: (phase c, shift). Input i under tap t lands on output position i*s - p + t*d, which is
    position v = i + shift of phase c."""
    return tuple(divmod(t * d - p, s)[::-1] for t in range(k))


def axis_phases(size: int, k: int, s: int, d: int, p: int, out: int) -> Tuple[Optional[AxisPhase], ...]:
    """Per output phase c: which taps, dilation and input window make it an ordinary conv (None: all zeros).

    Every phase is computed at ceil(out / s) positions, so the phases interleave by a reshape; the extra
    positions are real values of the transposed conv beyond the output and are cropped afterwards.
    """
    n = _phase_length(out, s)
    landings = tap_landings(k, s, d, p)
    phases = []
    for c in range(s):
        taps = [t for t in range(k) if landings[t][0] == c]
        if not taps:
            phases.append(None)
            continue
        shifts = [landings[t][1] for t in taps]  # position v of the phase reads input v - shift
        sub_dilation = shifts[1] - shifts[0] if len(taps) > 1 else 1
        first = -shifts[-1]  # input index read by the first tap of the reversed sub-kernel at v = 0
        last = n - 1 + first + (len(taps) - 1) * sub_dilation
        start, stop = max(0, first), min(size, last + 1)
        if stop <= start:
            phases.append(None)
            continue
        phases.append(AxisPhase(tuple(reversed(taps)), sub_dilation, start, stop,
                                (max(0, -first), max(0, last - (size - 1)))))
    return tuple(phases)


def forward(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    """The transposed conv's output, phase by phase."""
    form = spec.variant or variants(spec)[0]
    return phases_by_matmul(spec, x, w) if form == "matmul-forward" else phases_by_conv(spec, x, w)


def phases_by_conv(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    """Each output phase as an ordinary convolution of the input with its sub-kernel, through dispatch."""
    n, g = spec.ndim, spec.groups
    plans = [axis_phases(i, k, s, d, lo, o) for i, k, s, d, (lo, _), o in zip(
        spec.in_spatial, spec.kernel_size, spec.stride, spec.dilation, spec.padding, spec.out_spatial)]
    # The forward-conv weight (C_out, C_in/g, *k), not flipped: each phase picks and orders its own taps.
    k = spec.kernel_size
    w_fwd = jnp.swapaxes(w.reshape(g, spec.in_per_group, spec.out_per_group, *k), 1, 2).reshape(
        spec.out_channels, spec.in_per_group, *k)
    axes = spatial_axes(spec)
    outputs = []
    for phase in itertools.product(*plans):
        if any(p is None for p in phase):
            outputs.append(None)
            continue
        starts, limits = [0] * x.ndim, list(x.shape)
        for axis, p in zip(axes, phase):
            starts[axis], limits[axis] = p.start, p.stop
        xs = jax.lax.slice(x, starts, limits)
        sub_w = w_fwd[(slice(None), slice(None)) + np.ix_(*[np.asarray(p.taps) for p in phase])]
        inner = dataclasses.replace(
            spec, transposed=False, batched=True, in_spatial=tuple(p.stop - p.start for p in phase),
            kernel_size=tuple(len(p.taps) for p in phase), stride=(1,) * n, padding=tuple(p.pad for p in phase),
            dilation=tuple(p.dilation for p in phase), output_padding=(0,) * n, padding_mode="zeros",
            has_bias=False, lowering="auto")
        outputs.append(lower_inner(inner, xs, sub_w))
    return _interleave(spec, outputs)


def _phase_length(out: int, s: int) -> int:
    """Positions per phase along an axis: ceil(out / s), so that the phases interleave by a reshape."""
    return -(-out // s)


def _interleave(spec: ConvSpec, outputs: list) -> jax.Array:
    """The output from its phases (row-major over the per-axis phases; None: all zeros), cropped."""
    sizes = [_phase_length(o, s) for o, s in zip(spec.out_spatial, spec.stride)]
    batch_shape = (spec.batch, *sizes, spec.out_channels) if spec.channels_last else \
        (spec.batch, spec.out_channels, *sizes)
    y = jnp.stack([jnp.zeros(batch_shape, output_dtype(spec)) if o is None else o for o in outputs])
    return interleave_phases(spec, y, spec.stride, sizes, phases_first=True)


# --- the forward as matmuls: one per output phase, then shifted sums -----------------------------------------
#
# The product of the weight with the input, W^T X (taps x C_out, N x input positions), holds every tap's
# contribution; an output phase is the sum of its taps' products, each shifted by the tap's offset (col2im, with
# the shifts of one phase all whole positions). One matmul per phase over its own taps, and XLA fuses the shifted
# sums with the interleave into one loop. With few input channels the phase convs (XLA:CPU dense convolutions) are
# slower per FLOP than XLA's dot; with many, the matmuls' extra output costs more, hence the cap on C_in. XLA keeps
# all phases' products live until the one fused loop that reads them, so their size is capped too, under glibc's
# mmap threshold. Only with the matmul gradients: autodiff of this form was slower. (docs/lowerings.md, "phase".)
MATMUL_FORWARD_MAX_IN_CHANNELS = 128
MATMUL_FORWARD_MAX_BYTES = 14 * 2**20


def matmul_forward(spec: ConvSpec) -> bool:
    """Whether the forward is phases_by_matmul (else phases_by_conv)."""
    product = math.prod(spec.kernel_size) * spec.out_channels * spec.batch * math.prod(spec.in_spatial)
    return (gemm_grads(spec) and spec.in_channels <= MATMUL_FORWARD_MAX_IN_CHANNELS
            and product * jnp.dtype(accumulation_dtype(spec)).itemsize <= MATMUL_FORWARD_MAX_BYTES)


class TapPlacement(NamedTuple):
    tap: int  # kernel tap along the axis
    start: int  # its input window [start, stop)
    stop: int
    pad: Tuple[int, int]  # zeros around the window, to the phase's length


def axis_tap_placements(size: int, k: int, s: int, d: int, p: int, out: int) -> Tuple[Tuple[TapPlacement, ...], ...]:
    """Per output phase c: the taps that land on it (tap_landings) and the input window each one covers."""
    n = _phase_length(out, s)
    phases = [[] for _ in range(s)]
    for t, (c, shift) in enumerate(tap_landings(k, s, d, p)):
        start, stop = max(0, -shift), min(size, n - shift)
        if stop > start:
            phases[c].append(TapPlacement(t, start, stop, (start + shift, n - stop - shift)))
    return tuple(tuple(phase) for phase in phases)


def phases_by_matmul(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    """Each output phase as one matmul of its taps' weights with the input and a sum of shifted products."""
    n, k = spec.ndim, spec.kernel_size
    cin, cout, batch = spec.in_channels, spec.out_channels, spec.batch
    plans = [axis_tap_placements(i, kk, s, d, lo, o) for i, kk, s, d, (lo, _), o in zip(
        spec.in_spatial, k, spec.stride, spec.dilation, spec.padding, spec.out_spatial)]
    # Channels-first, the input goes to (C_in, N, *spatial) and the products come out (taps x C_out, N, *spatial),
    # each tap a contiguous block: multiplying the batched (N, C_in, positions) input made XLA add layout copies.
    # The spatial axes stay unflattened so that a sharded one stays sharded under GSPMD (XLA:CPU flattens them
    # inside the dot anyway). Half-precision operands are widened first: XLA:CPU has no BF16 x BF16 = F32 dot for
    # the channels-first layout. The products are the same. (docs/lowerings.md, "phase".)
    acc = accumulation_dtype(spec)
    xm = (x if spec.channels_last else jnp.swapaxes(x, 0, 1)).astype(acc)
    w_taps = _weight_matrix(spec, w).astype(acc).reshape(cin, -1, cout)  # (C_in, taps, C_out)
    zero = jnp.zeros((), acc)
    axes = spatial_axes(spec)
    outputs = []
    for phase in itertools.product(*[range(s) for s in spec.stride]):
        placements = list(itertools.product(*[plan[c] for plan, c in zip(plans, phase)]))
        if not placements:
            outputs.append(None)
            continue
        taps = np.asarray([np.ravel_multi_index([p.tap for p in tap], k) for tap in placements])
        w_phase = w_taps[:, taps]  # (C_in, phase taps, C_out)
        if spec.channels_last:
            y = _tensordot(spec, xm, w_phase.reshape(cin, -1), ((n + 1,), (0,)))
            y = y.reshape(batch, *spec.in_spatial, len(taps), cout)
        else:
            y = _tensordot(spec, w_phase.reshape(cin, -1), xm, ((0,), (0,)))
            y = y.reshape(len(taps), cout, batch, *spec.in_spatial)
        total = None
        for j, tap in enumerate(placements):
            yt = y[(slice(None),) * (n + 1) + (j,)] if spec.channels_last else jnp.swapaxes(y[j], 0, 1)
            start, limit, pads = [0] * yt.ndim, list(yt.shape), [(0, 0, 0)] * yt.ndim
            for axis, p in zip(axes, tap):
                start[axis], limit[axis], pads[axis] = p.start, p.stop, (*p.pad, 0)
            term = lax.pad(lax.slice(yt, start, limit), zero, pads)
            total = term if total is None else total + term
        outputs.append(total.astype(output_dtype(spec)))
    return _interleave(spec, outputs)


# --- the gradients as two matmuls over the output gradient's columns -----------------------------------------
#
# Input position i of a transposed conv sends x[i] * w[:, :, t] to output position i*s - p + t*d, so the output
# gradient's value at that position, for every tap t, is a matrix G (taps x C_out, N x input positions) of
# strided slices of g, and both gradients are one matmul each: grad_input = W G (W: C_in x (taps x C_out)) and
# grad_weight = X G^T. Autodiff of the phase form instead transposes every phase conv separately, which measured
# slower at stride 2 and above; stride 1 is mixed and left to autodiff. G holds about prod(k) / prod(s) times as
# many values as the output gradient, hence the cap. Grouped convs keep autodiff of the phase form (depthwise
# phases are elementwise tap sums; a matmul form batched over groups measured mixed). (docs/lowerings.md, "phase".)
GEMM_GRAD_MAX_EXPANSION = 8


def gemm_grads(spec: ConvSpec) -> bool:
    """Whether the gradients are the two matmuls over the output gradient's columns (else autodiff)."""
    return spec.groups == 1 and math.prod(spec.kernel_size) <= GEMM_GRAD_MAX_EXPANSION * math.prod(spec.stride)


def output_grad_columns(spec: ConvSpec, g: jax.Array) -> jax.Array:
    """G: g at i*s - p + t*d for every input position i and tap t (zero outside the output).

    Channels-first: (taps x C_out, N x input positions); channels-last: (N x input positions, taps x C_out).
    Each tap's column is a strided slice of g padded on its own, not a slice of one padded copy of g: XLA:CPU
    fuses those pads into the stack but materialized the padded copy, an extra buffer that pushed the scratch
    over glibc's mmap threshold (docs/lowerings.md, "phase").
    """
    axes = spatial_axes(spec)
    if not spec.channels_last:
        g = jnp.swapaxes(g, 0, 1)  # (C_out, N, *spatial): the columns come out without a transpose
    zero = jnp.zeros((), g.dtype)
    columns = []
    for tap in itertools.product(*(range(k) for k in spec.kernel_size)):
        start, limit, strides, pads = [0] * g.ndim, list(g.shape), [1] * g.ndim, [(0, 0, 0)] * g.ndim
        for axis, t, i, s, d, (lo, _), o in zip(axes, tap, spec.in_spatial, spec.stride, spec.dilation,
                                                spec.padding, spec.out_spatial):
            offset = t * d - lo  # input position j reads output position offset + j*s
            first = max(0, -(offset // s))  # the first j whose position is >= 0
            last = min(i - 1, (o - 1 - offset) // s)  # the last j whose position is < o
            if last < first:  # this tap lands outside the output for every j
                start[axis], limit[axis], pads[axis] = 0, 0, (i, 0, 0)
            else:
                start[axis], limit[axis], strides[axis] = offset + first * s, offset + last * s + 1, s
                pads[axis] = (first, i - 1 - last, 0)
        columns.append(lax.pad(lax.slice(g, start, limit, strides), zero, pads))
    if spec.channels_last:
        # One flat stack: nested ones (below) fuse here too, but a fused loop that interleaves taps every C_out
        # elements ran slower than copying each tap's column into place (docs/lowerings.md, "phase").
        return jnp.stack(columns, axis=-2).reshape(-1, len(columns) * spec.out_channels)
    return _stack_taps(columns, _tap_levels(len(columns))).reshape(len(columns) * spec.out_channels, -1)


# XLA:CPU fuses a concatenation of up to 8 operands into one loop that writes each element once; with 9 or more it
# computed every operand into its own buffer and then copied them all into the result. Nested stacks of at most 8
# each fuse into one loop, and XLA does not flatten stacks nested along different dimensions back into one
# (docs/lowerings.md, "phase").
MAX_FUSED_CONCAT = 8


def _tap_levels(taps: int) -> Tuple[int, ...]:
    """Sizes of nested stacks whose product is `taps`, each at most MAX_FUSED_CONCAT where the factors allow (a
    prime factor larger than that stays one level): 27 -> (3, 3, 3), 16 -> (2, 8), 22 -> (11, 2)."""
    levels = []
    while taps > MAX_FUSED_CONCAT:
        divisor = max((f for f in range(2, MAX_FUSED_CONCAT + 1) if taps % f == 0), default=None)
        if divisor is None:
            break
        levels.append(divisor)
        taps //= divisor
    return (taps, *levels)


def _stack_taps(columns: list, levels: Tuple[int, ...]) -> jax.Array:
    """jnp.stack(columns) built as nested stacks of sizes `levels` (row-major: the same result)."""
    if len(levels) == 1:
        return jnp.stack(columns)
    chunk = len(columns) // levels[0]
    return jnp.stack([_stack_taps(columns[i * chunk:(i + 1) * chunk], levels[1:]) for i in range(levels[0])])


def _weight_matrix(spec: ConvSpec, w: jax.Array) -> jax.Array:
    """(C_in, C_out, *k) -> (C_in, taps x C_out), the column order of output_grad_columns."""
    taps = math.prod(spec.kernel_size)
    return jnp.swapaxes(w.reshape(spec.in_channels, spec.out_channels, taps), 1, 2).reshape(spec.in_channels, -1)


def _matmul(spec: ConvSpec, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.matmul(a, b, precision=spec.precision, preferred_element_type=accumulation_dtype(spec))


def _tensordot(spec: ConvSpec, a: jax.Array, b: jax.Array, axes) -> jax.Array:
    return lax.dot_general(a, b, (axes, ((), ())), precision=spec.precision,
                           preferred_element_type=accumulation_dtype(spec))


def grad_input(spec: ConvSpec, w: jax.Array, g: jax.Array) -> jax.Array:
    columns = output_grad_columns(spec, g)
    batch_shape = (spec.batch, *spec.in_spatial)
    if spec.channels_last:
        gx = _matmul(spec, columns, _weight_matrix(spec, w).T).reshape(*batch_shape, spec.in_channels)
    else:
        # (C_in, N, positions) -> (N, C_in, positions), the positions flattened: XLA:CPU moves the product in one
        # copy; swapping the unflattened axes made it copy twice.
        gx = jnp.swapaxes(_matmul(spec, _weight_matrix(spec, w), columns).reshape(
            spec.in_channels, spec.batch, math.prod(spec.in_spatial)), 0, 1).reshape(
            spec.batch, spec.in_channels, *spec.in_spatial)
    return gx.astype(spec.dtype)


def grad_weight(spec: ConvSpec, x: jax.Array, g: jax.Array) -> jax.Array:
    columns = output_grad_columns(spec, g)
    taps = math.prod(spec.kernel_size)
    if spec.channels_last:
        gw = _matmul(spec, x.reshape(-1, spec.in_channels).T, columns).reshape(spec.in_channels, taps, -1)
        gw = jnp.swapaxes(gw, 1, 2)  # (C_in, C_out, taps)
    else:
        # G X^T, (taps x C_out, C_in), and the small result transposed: XLA:CPU ran X G^T slower here, and faster
        # channels-last, which keeps X^T G (docs/lowerings.md, "phase").
        gw = _tensordot(spec, columns, jnp.swapaxes(x, 0, 1).reshape(spec.in_channels, -1), ((1,), (1,)))
        gw = jnp.transpose(gw.reshape(taps, spec.out_channels, spec.in_channels), (2, 1, 0))
    return gw.reshape(spec.in_channels, spec.out_channels, *spec.kernel_size).astype(spec.dtype)


def _gemm_tangent_terms(spec, x, w, tx, tw):
    # As in the taps lowering: reverse mode transposes these tangent maps back into the two matmuls.
    return [(tx, lambda g: grad_input(spec, w, g)), (tw, lambda g: grad_weight(spec, x, g))], []


_with_gemm_grads = with_tangent_terms(forward, _gemm_tangent_terms)


def _fast(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    form = spec.variant or variants(spec)[0]
    return _with_gemm_grads(spec, x, w) if form != "autodiff" else forward(spec, x, w)


# The phase convs pad their windows: a NaN or inf weight would meet those zeros (docs/semantics.md, "Non-finite
# values"), so lax runs instead. The branch costs time on the output's path, so only that form has it: the matmul
# forward adds padding to its products instead, and a non-finite input meets zeros only as torch's products do.
_with_exact_fallback = with_exact_fallback(_fast, xla.lower, guard_input=False)


def variants(spec: ConvSpec) -> Tuple[str, ...]:
    """"matmul-forward" (with the matmul gradients), "gemm-grads" (phase convs, matmul gradients) or "autodiff"
    (phase convs and their autodiff), the rules' choice (matmul_forward, gemm_grads) first; the matmul forms
    are ungrouped only (see gemm_grads)."""
    rule = "matmul-forward" if matmul_forward(spec) else "gemm-grads" if gemm_grads(spec) else "autodiff"
    possible = ("matmul-forward", "gemm-grads", "autodiff") if spec.groups == 1 else ("autodiff",)
    return (rule, *(v for v in possible if v != rule))


def lower(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    form = spec.variant or variants(spec)[0]
    # forward and _fast read the same form from the spec; only the conv-per-phase forms need the guard.
    return _fast(spec, x, w) if form == "matmul-forward" else _with_exact_fallback(spec, x, w)
