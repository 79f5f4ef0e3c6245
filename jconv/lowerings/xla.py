"""The reference lowering: one lax.conv_general_dilated with explicit (lo, hi) pads.

Handles every configuration. Transposed convs use the textbook form (lhs_dilation = stride over a flipped,
regrouped kernel), which is correct everywhere but slow where XLA convolves the inserted zeros.

One CPU exception to folding zero padding into the convolution: along axes where the padding makes the output
longer than the input (a 'full' or causal conv padded by more than the kernel's reach), XLA:CPU computes the
weight gradient 10-30x slower with the padding folded in than with the same zeros padded beforehand (development
probe, 2 cores, gradient w.r.t. the weight alone: 8x32x14x14 -> 64 3x3 padding 2: 16 vs 1.1 ms; 4x64x1024 -> 64
k3 padding (2, 1): 29 vs 1.0; k2 padding 1: 14 vs 1.1; stride 2 padding 40 on 64 samples: 7.5 vs 1.2). Only the
weight gradient takes the padded input: a custom_jvp whose weight tangent is the conv of the padded input, so the
forward and the input gradient stay lax's own (the benchmark measured the forward with the pad 0.78-0.87x of
lax's), reverse mode transposes that tangent into the fast weight gradient, and forward mode still works.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jconv.lowerings.common import (dimension_numbers, spatial_axes, tangent_from_gradients,
                                    transposed_as_conv_padding, transposed_weight_as_conv)
from jconv.spec import ConvSpec

NAME = "xla"
# XLA's convolutions are deterministic on CPU; on GPU, cuDNN autotuning may pick non-deterministic
# algorithms unless jconv's deterministic mode sets XLA's flags (see jconv.determinism).
DETERMINISTIC = True


def accepts(spec: ConvSpec):
    return None


def padded_beforehand(spec: ConvSpec) -> tuple:
    """Per spatial axis, whether the weight gradient pads the input before the conv instead of folding it in."""
    if spec.transposed or "spatial" in spec.explicit_sharding or jax.default_backend() != "cpu":
        return (False,) * spec.ndim
    return tuple(o > i and lo + hi > 0 for o, i, (lo, hi) in zip(
        spec.out_spatial, spec.lowering_in_spatial, spec.lowering_padding))


def _conv(spec: ConvSpec, x: jax.Array, w: jax.Array, beforehand=None) -> jax.Array:
    if spec.transposed:  # the forward conv of the zero-stuffed input with the flipped, regrouped kernel
        w = transposed_weight_as_conv(spec, w)
        strides, padding, lhs_dilation = (1,) * spec.ndim, transposed_as_conv_padding(spec), spec.stride
    else:
        strides, padding, lhs_dilation = spec.stride, spec.lowering_padding, None
    if beforehand is not None:
        config = [(0, 0, 0)] * x.ndim
        for axis, pad, b in zip(spatial_axes(spec), padding, beforehand):
            config[axis] = (*pad, 0) if b else (0, 0, 0)
        x = lax.pad(x, jnp.zeros((), x.dtype), config)
        padding = tuple((0, 0) if b else pad for pad, b in zip(padding, beforehand))
    return lax.conv_general_dilated(
        x, w,
        window_strides=strides,
        padding=padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=spec.dilation,
        dimension_numbers=dimension_numbers(spec),
        feature_group_count=spec.groups,
        precision=spec.precision,
        preferred_element_type=spec.preferred_element_type,
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _with_padded_weight_gradient(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    return _conv(spec, x, w)


def _with_padded_weight_gradient_jvp(spec, primals, tangents):
    x, w = primals
    tx, tw = tangents
    y = _conv(spec, x, w)
    direct = [] if isinstance(tx, SymbolicZero) else [_conv(spec, tx, w)]
    if not isinstance(tw, SymbolicZero):
        direct.append(_conv(spec, x, tw, beforehand=padded_beforehand(spec)))
    return y, tangent_from_gradients(y, [], direct)


_with_padded_weight_gradient.defjvp(_with_padded_weight_gradient_jvp, symbolic_zeros=True)


def lower(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    if any(padded_beforehand(spec)):
        return _with_padded_weight_gradient(spec, x, w)
    return _conv(spec, x, w)
