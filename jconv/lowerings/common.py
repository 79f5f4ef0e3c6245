"""Layout helpers shared by the lowerings: one place for dimension numbers and weight re-arrangements, the
platform being lowered for, and the non-finite guard."""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_batching import custom_vmap
from jax.custom_derivatives import SymbolicZero

from jconv.spec import ConvSpec

_SPATIAL_LETTERS = {1: "W", 2: "HW", 3: "DHW"}


def target_platform(spec: ConvSpec) -> str:
    """The platform ("cpu", "gpu", "tpu", ...) `spec` is lowered for: its branch of jax.lax.platform_dependent
    (jconv.dispatch.lower), else JAX's default backend. Code that differs by platform reads this, never
    jax.default_backend(), so that exporting for another platform gets that platform's code; being part of the
    static spec, it reaches custom derivative rules that run after the branch was traced."""
    return spec.platform or jax.default_backend()


def dimension_numbers(spec: ConvSpec) -> tuple:
    """lax dimension numbers for the spec's layout with a PyTorch-layout (O, I, *k) kernel."""
    sp = _SPATIAL_LETTERS[spec.ndim]
    lhs = f"N{sp}C" if spec.channels_last else f"NC{sp}"
    return (lhs, f"OI{sp}", lhs)


def transposed_weight_as_conv(spec: ConvSpec, w: jax.Array) -> jax.Array:
    """(C_in, C_out/g, *k) transposed-conv weight -> the (C_out, C_in/g, *k) forward-conv weight, flipped.

    A transposed convolution is the forward convolution of the zero-stuffed input with this kernel.
    """
    g = spec.groups
    k = spec.kernel_size
    w = w.reshape(g, spec.in_channels // g, spec.out_per_group, *k)
    w = jnp.swapaxes(w, 1, 2).reshape(spec.out_channels, spec.in_channels // g, *k)
    return jnp.flip(w, axis=tuple(range(2, 2 + spec.ndim)))


def conv_weight_as_transposed(spec: ConvSpec, w: jax.Array) -> jax.Array:
    """The inverse of transposed_weight_as_conv: a (C_out, C_in/g, *k) forward-conv weight -> the flipped
    (C_in, C_out/g, *k) weight of the transposed conv that `spec` describes."""
    g = spec.groups
    k = spec.kernel_size
    w = w.reshape(g, spec.out_per_group, spec.in_channels // g, *k)
    w = jnp.swapaxes(w, 1, 2).reshape(spec.in_channels, spec.out_per_group, *k)
    return jnp.flip(w, axis=tuple(range(2, 2 + spec.ndim)))


def transposed_as_conv_padding(spec: ConvSpec) -> tuple:
    """Pads of the equivalent forward conv over the zero-stuffed input; may be negative (then they crop)."""
    return tuple(
        (d * (k - 1) - lo, d * (k - 1) - hi + op)
        for d, k, (lo, hi), op in zip(spec.dilation, spec.kernel_size, spec.padding, spec.output_padding)
    )


# Lowerings that build one program per stride or dilation phase (phase, dilated) compile in time that grows with
# the number of phases, where lax's own convolution does not: they decline past this many
# (benchmarks/results/compile_time_cpu.md).
MAX_PHASES = 16


def channel_axis(spec: ConvSpec) -> int:
    """Channel axis of a batched array in the spec's layout."""
    return spec.ndim + 1 if spec.channels_last else 1


def spatial_axes(spec: ConvSpec) -> tuple:
    """Axes of the spatial dimensions in a batched array of the spec's layout."""
    first = 1 if spec.channels_last else 2
    return tuple(range(first, first + spec.ndim))


def padded_spatial(spec: ConvSpec) -> tuple:
    """Spatial sizes of the input after the spec's zero padding (what zero_pad returns without extra_hi)."""
    return tuple(i + lo + hi for i, (lo, hi) in zip(spec.lowering_in_spatial, spec.lowering_padding))


def pad_spatial(spec: ConvSpec, x: jax.Array, pads) -> jax.Array:
    """x with zeros around its spatial axes: `pads` holds (lo, hi) or (lo, hi, interior) per spatial axis
    (negative amounts crop)."""
    config = [(0, 0, 0)] * x.ndim
    for axis, pad in zip(spatial_axes(spec), pads):
        config[axis] = (*pad, 0)[:3]
    if all(c == (0, 0, 0) for c in config):
        return x
    return lax.pad(x, jnp.zeros((), x.dtype), config)


def zero_pad(spec: ConvSpec, x: jax.Array, extra_hi=None) -> jax.Array:
    """Apply the spec's zero padding explicitly (for lowerings that slice the input themselves)."""
    extra_hi = extra_hi or (0,) * spec.ndim
    return pad_spatial(spec, x, [(lo, hi + e) for (lo, hi), e in zip(spec.lowering_padding, extra_hi)])


def interleave_phases(spec: ConvSpec, y: jax.Array, factors, lengths, phases_first: bool) -> jax.Array:
    """The output from its phases: y holds prod(factors) phase outputs of `lengths` positions per spatial axis,
    the phases row-major along one axis before the batch (phases_first) or after it (batch-major). Phase c_i goes
    right after position v_i along each spatial axis; the result is cropped to spec.out_spatial."""
    n, batch, channels = spec.ndim, spec.batch, spec.out_channels
    batch_shape = (batch, *lengths, channels) if spec.channels_last else (batch, channels, *lengths)
    if phases_first:
        y = y.reshape(*factors, *batch_shape)
        batch_axis, factor_axes = n, tuple(range(n))
    else:
        y = y.reshape(batch, *factors, *batch_shape[1:])
        batch_axis, factor_axes = 0, tuple(range(1, n + 1))
    rest = n + 1  # the first axis after the batch and the factors
    length_axes = range(rest, rest + n) if spec.channels_last else range(rest + 1, rest + 1 + n)
    channel_axes = (rest + n,) if spec.channels_last else (rest,)
    pairs = [v for length_axis, factor_axis in zip(length_axes, factor_axes) for v in (length_axis, factor_axis)]
    perm = (batch_axis, *pairs, *channel_axes) if spec.channels_last else (batch_axis, *channel_axes, *pairs)
    spatial = [m * f for m, f in zip(lengths, factors)]
    y = y.transpose(perm).reshape((batch, *spatial, channels) if spec.channels_last else (batch, channels, *spatial))
    crop = tuple(slice(0, o) for o in spec.out_spatial)
    return y[(slice(None), *crop, slice(None))] if spec.channels_last else y[(slice(None), slice(None), *crop)]


def tap_slice(spec: ConvSpec, x: jax.Array, tap) -> jax.Array:
    """The input elements that kernel tap `tap` meets, for every output position: a strided, offset slice."""
    start = [0] * x.ndim
    limit = list(x.shape)
    strides = [1] * x.ndim
    for axis, t, d, o, s in zip(spatial_axes(spec), tap, spec.dilation, spec.out_spatial, spec.stride):
        start[axis] = t * d
        limit[axis] = t * d + (o - 1) * s + 1
        strides[axis] = s
    return jax.lax.slice(x, start, limit, strides)


def accumulation_dtype(spec: ConvSpec):
    """Sums of products run in at least float32, as XLA's own convolutions do for half types."""
    return jnp.promote_types(spec.dtype, jnp.float32)


def materialized(a: jax.Array) -> jax.Array:
    """a, computed into a buffer of its own instead of fused into each of its consumers.

    XLA fuses a cheap producer, such as a transpose, into the loops that read it, which then read its operand in
    the producer's index order (strided); optimization barriers are removed before fusion on CPU. A scatter is
    not fused into its consumers, so writing every row of `a` with one (distinct, in-bounds indices, hence
    exactly `a`; differentiable, vmappable) leaves `a` materialized in its own layout."""
    return jnp.zeros_like(a).at[jnp.arange(a.shape[0])].set(a, indices_are_sorted=True, unique_indices=True)


def output_dtype(spec: ConvSpec):
    return spec.preferred_element_type or spec.dtype


def input_grad_dilation(spec: ConvSpec) -> list:
    """(lo, hi, interior) per spatial axis that turn an output gradient into the input of the correlation with
    the flipped kernel whose output is the gradient w.r.t. the padded input: the gradient is dilated by the
    stride, padded by the dilated kernel's reach, and extended over trailing inputs the forward never read."""
    config = []
    for o, s, d, k, p in zip(spec.out_spatial, spec.stride, spec.dilation, spec.kernel_size, padded_spatial(spec)):
        reach = d * (k - 1)
        config.append((reach, reach + p - ((o - 1) * s + 1 + reach), s - 1))
    return config


ALL_ROLES = ("batch", "channel", "spatial")


def sharding_refusal(spec: ConvSpec, roles=ALL_ROLES, does: str = "pads, slices or reshapes") -> Optional[str]:
    """Why a lowering that `does` this to input axes of these roles declines a spec where such an axis is sharded
    over an Explicit mesh axis (the sharding is part of the array's type there, so the program cannot
    type-check); None where none is."""
    sharded = [role for role in spec.explicit_sharding if role in roles]
    if sharded:
        return f"{does} axes ({', '.join(sharded)}) sharded over an Explicit mesh axis"
    return None


def transposed_refusal(spec: ConvSpec) -> Optional[str]:
    """Why a lowering of forward convolutions declines a transposed one; None for a forward conv."""
    return "transposed convolutions are handled by the phase and xla lowerings" if spec.transposed else None


def tangent_from_gradients(y: jax.Array, parts, direct=()) -> jax.Array:
    """The tangent of a conv output y, each argument's part the linear transpose of that argument's gradient.

    `parts` holds (tangent, gradient) pairs, gradient mapping an output cotangent g to that argument's gradient;
    symbolic-zero tangents are skipped. `direct` holds tangent parts already computed. Written so, reverse mode
    transposes each tangent map back into its gradient function, and forward mode (jvp, jacfwd, hessian) still
    works.
    """
    # The example carries y's full type, including a sharding in explicit-sharding meshes, so that the
    # transposed function's cotangent type matches the tangent's.
    g_example = jax.ShapeDtypeStruct(y.shape, y.dtype, sharding=getattr(jax.typeof(y), "sharding", None))
    terms = [jax.linear_transpose(gradient, g_example)(t)[0] for t, gradient in parts
             if not isinstance(t, SymbolicZero)] + list(direct)
    total = functools.reduce(jnp.add, terms) if terms else jnp.zeros_like(y)
    return total.astype(y.dtype)


def with_tangent_terms(forward, tangent_terms):
    """forward(spec, x, w) as a custom_jvp whose tangent is tangent_from_gradients(y, *tangent_terms(spec, x, w,
    tx, tw)): each term a form chosen for its transpose, which reverse mode runs as the gradient."""

    @functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
    def convolve(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
        return forward(spec, x, w)

    def jvp(spec, primals, tangents):
        y = forward(spec, *primals)
        parts, direct = tangent_terms(spec, *primals, *tangents)
        return y, tangent_from_gradients(y, parts, direct)

    convolve.defjvp(jvp, symbolic_zeros=True)
    return convolve


def with_weight_tangent(forward, weight_tangent):
    """forward(spec, x, w) whose weight tangent is weight_tangent(spec, x, tw): the same bilinear map in another
    form, chosen for its transpose (the weight gradient). The input tangent is forward(spec, tx, w), transposed by
    JAX as usual."""

    def terms(spec, x, w, tx, tw):
        direct = [] if isinstance(tx, SymbolicZero) else [forward(spec, tx, w)]
        if not isinstance(tw, SymbolicZero):
            direct.append(weight_tangent(spec, x, tw))
        return [], direct

    return with_tangent_terms(forward, terms)


# --- non-finite values: a runtime branch to an exact form --------------------------------------------------
#
# A fast formulation that multiplies by zeros neither lax nor torch forms products with (an output gradient's
# padding, say) puts NaNs where they have finite values: 0 * NaN = NaN, 0 * inf = NaN. Where masking those products
# would cost too much, the fast form is guarded: an exact form runs instead when a guarded operand holds a NaN or
# inf (docs/semantics.md, "Non-finite values"). XLA:CPU runs a convolution or matmul inside lax.cond far slower
# than outside (same page), so a branch holds either elementwise work only (exact_for_nonfinite), or the exact form
# alone, with the fast one outside it (with_exact_fallback).


@custom_vmap
def _all_finite(a: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(a))


@_all_finite.def_vmap
def _all_finite_batched(axis_size, in_batched, a):
    # One answer for the whole batch: a batched predicate would turn lax.cond into a select that runs both
    # branches. The exact form is exact for finite values too, so the examples that are finite lose nothing.
    return jnp.all(jnp.isfinite(a)), False


def all_finite(*arrays: jax.Array) -> jax.Array:
    """A scalar bool: every element of every array is finite (no gradient flows through it)."""
    checks = [_all_finite(lax.stop_gradient(a)) for a in arrays]
    return functools.reduce(jnp.logical_and, checks)


def exact_for_nonfinite(fast, exact, *guarded: jax.Array):
    """fast, or exact where any guarded array holds a NaN or inf: a function of the same arguments.

    Both must compute the same values for finite operands; `exact` must place non-finite values as lax or torch
    does. A lax.cond, so it works under jit, vmap (one branch for the whole batch), grad, jvp and linear_transpose
    (the predicate depends only on `guarded`, never on a linear argument)."""
    predicate = all_finite(*guarded)
    return lambda *args: lax.cond(predicate, fast, exact, *args)


def _zero_nonfinite(a: jax.Array) -> jax.Array:
    return jnp.where(jnp.isfinite(a), a, jnp.zeros((), a.dtype))


def with_exact_fallback(fast, exact, *, guard_input: bool = True):
    """lower(spec, x, w): fast(spec, x, w) where the guarded operands (w, and x unless guard_input=False) are
    finite, exact(spec, x, w) where one holds a NaN or inf. `fast` runs outside the branch, keeping its speed, on
    the guarded operands with non-finite values replaced by zeros, so that its gradients stay finite where the
    branch discards its output; the branch passes that output on, or runs `exact` (which the common case never
    does)."""

    def lower(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
        finite = all_finite(x, w) if guard_input else all_finite(w)
        y = fast(spec, _zero_nonfinite(x) if guard_input else x, _zero_nonfinite(w))
        return lax.cond(finite, lambda y, x, w: y, lambda y, x, w: exact(spec, x, w).astype(y.dtype), y, x, w)

    return lower
