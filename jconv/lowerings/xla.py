"""The reference lowering: one lax.conv_general_dilated with explicit (lo, hi) pads.

Handles every configuration. Transposed convs use the textbook form (lhs_dilation = stride over a flipped,
regrouped kernel), which is correct everywhere but slow where XLA convolves the inserted zeros.
"""

from __future__ import annotations

import jax
from jax import lax

from jconv.lowerings.common import dimension_numbers, transposed_as_conv_padding, transposed_weight_as_conv
from jconv.spec import ConvSpec

NAME = "xla"
# XLA's convolutions are deterministic on CPU; on GPU, cuDNN autotuning may pick non-deterministic
# algorithms unless jconv's deterministic mode sets XLA's flags (see jconv.determinism).
DETERMINISTIC = True


def accepts(spec: ConvSpec):
    return None


def lower(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    if spec.transposed:  # the forward conv of the zero-stuffed input with the flipped, regrouped kernel
        w = transposed_weight_as_conv(spec, w)
        strides, padding, lhs_dilation = (1,) * spec.ndim, transposed_as_conv_padding(spec), spec.stride
    else:
        strides, padding, lhs_dilation = spec.stride, spec.lowering_padding, None
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
