"""The reference lowering: one lax.conv_general_dilated with explicit (lo, hi) pads.

Handles every configuration. Transposed convs use the textbook form (lhs_dilation = stride over a flipped,
regrouped kernel), which is correct everywhere but slow where XLA convolves the inserted zeros.

One CPU exception to folding zero padding into the convolution: along axes where the padding makes the output
longer than the input (a 'full' or causal conv padded by more than the kernel's reach), XLA:CPU computes the
weight gradient many times slower with the padding folded in, so the weight gradient pads that excess
beforehand and folds the rest (docs/lowerings.md, "xla"). Only the weight gradient does this: a custom_jvp whose
weight tangent is the conv of the pre-padded input, so the forward and the input gradient stay lax's own, reverse
mode transposes that tangent into the fast weight gradient, and forward mode still works.
"""

from __future__ import annotations

from typing import Optional, Tuple

import jax
from jax import lax

from jconv.lowerings.common import (
    dimension_numbers, pad_spatial, target_platform, transposed_as_conv_padding, transposed_weight_as_conv,
    with_weight_tangent)
from jconv.spec import ConvSpec

NAME = "xla"
# XLA's convolutions are deterministic on CPU; on GPU, cuDNN autotuning may pick non-deterministic
# algorithms unless jconv's deterministic mode sets XLA's flags (see jconv.determinism).
DETERMINISTIC = True


def variants(spec: ConvSpec) -> Tuple[str, ...]:
    return ("default",)


def refusal(spec: ConvSpec) -> Optional[str]:
    return None


def padded_beforehand(spec: ConvSpec, platform: Optional[str] = None) -> tuple:
    """Per spatial axis, the (lo, hi) zeros the weight gradient pads before the conv on `platform` (default: the
    one being lowered for): the excess of the output's length over the input's, taken from both sides so that the
    padding left folded in is as even as possible."""
    none = ((0, 0),) * spec.ndim
    if spec.transposed or "spatial" in spec.explicit_sharding or (platform or target_platform(spec)) != "cpu":
        return none
    pads = []
    for o, i, (lo, hi) in zip(spec.out_spatial, spec.lowering_in_spatial, spec.lowering_padding):
        excess = max(0, o - i)  # <= lo + hi: without padding the output is never longer than the input
        pre_lo = min(max((lo - hi + excess + 1) // 2, excess - hi, 0), lo, excess)
        pads.append((pre_lo, excess - pre_lo))
    return tuple(pads)


def pads_beforehand(spec: ConvSpec, platform: Optional[str] = None) -> bool:
    """Whether the weight gradient pads anything before the conv on `platform` (padded_beforehand)."""
    return any(pads != (0, 0) for pads in padded_beforehand(spec, platform))


def conv(spec: ConvSpec, x: jax.Array, w: jax.Array, beforehand=None) -> jax.Array:
    """The spec's conv as one lax.conv_general_dilated; `beforehand`: per spatial axis, (lo, hi) zeros padded
    before the conv instead of folded into it."""
    if spec.transposed:  # the forward conv of the zero-stuffed input with the flipped, regrouped kernel
        w = transposed_weight_as_conv(spec, w)
        strides, padding, lhs_dilation = (1,) * spec.ndim, transposed_as_conv_padding(spec), spec.stride
    else:
        strides, padding, lhs_dilation = spec.stride, spec.lowering_padding, None
    if beforehand is not None:
        x = pad_spatial(spec, x, beforehand)
        padding = tuple((lo - a, hi - b) for (lo, hi), (a, b) in zip(padding, beforehand))
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


# The weight gradient is the transpose of the weight tangent, computed with the padding applied beforehand.
_with_padded_weight_gradient = with_weight_tangent(
    conv, lambda spec, x, tw: conv(spec, x, tw, beforehand=padded_beforehand(spec)))


def lower(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    if pads_beforehand(spec):
        return _with_padded_weight_gradient(spec, x, w)
    return conv(spec, x, w)
