"""Layout helpers shared by the lowerings: one place for dimension numbers and weight re-arrangements."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jconv.spec import ConvSpec

_SPATIAL_LETTERS = {1: "W", 2: "HW", 3: "DHW"}


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


def transposed_as_conv_padding(spec: ConvSpec) -> tuple:
    """Pads of the equivalent forward conv over the zero-stuffed input; may be negative (then they crop)."""
    return tuple(
        (d * (k - 1) - lo, d * (k - 1) - hi + op)
        for d, k, (lo, hi), op in zip(spec.dilation, spec.kernel_size, spec.padding, spec.output_padding)
    )


def channel_axis(spec: ConvSpec) -> int:
    """Channel axis of a batched array in the spec's layout."""
    return spec.ndim + 1 if spec.channels_last else 1
