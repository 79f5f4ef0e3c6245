"""Pointwise (1x1...) convolution as one matrix product over channels.

A kernel of size 1 is a matmul between the (strided) input and the (C_out, C_in) weight. XLA:CPU's convolution
emitter is slower at it than its dot: 8x256x28x28 -> 64 forward+backward 15.2 ms as a lax conv, 7.1 ms as an
einsum (NCHW; 9.8 vs 3.1 ms channels-last; a development probe, the benchmark run is
benchmarks/results/cpu.md).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jconv.lowerings.common import output_dtype, tap_slice, zero_pad
from jconv.spec import ConvSpec

NAME = "matmul"
DETERMINISTIC = True


def accepts(spec: ConvSpec):
    if set(spec.explicit_sharding) & {'spatial'}:
        return f"pads, slices or reshapes axes ({', '.join(spec.explicit_sharding)}) sharded over an Explicit mesh axis"
    if spec.transposed:
        return "transposed convolutions are handled by the phase and xla lowerings"
    if any(k != 1 for k in spec.kernel_size):
        return f"needs a kernel of size 1, but got {spec.kernel_size}"
    if spec.groups != 1:
        return "needs groups == 1 (grouped pointwise convs go to the grouped lowering)"
    return None


def lower(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    xs = tap_slice(spec, zero_pad(spec, x), (0,) * spec.ndim)  # the stride, as a strided slice
    w2 = w.reshape(spec.out_channels, spec.in_channels)
    if spec.channels_last:
        y = jnp.einsum("...c,oc->...o", xs, w2, precision=spec.precision,
                       preferred_element_type=spec.preferred_element_type)
    else:
        # (C_out, C_in) @ (N, C_in, positions): the product comes out (C_out, N, positions), and XLA:CPU moves it
        # to (N, C_out, positions) in one copy. The einsum "nc...,oc->no..." made it (N, positions, C_out), which
        # XLA copied twice (a layout change, then the transpose), for the output and the input gradient alike
        # (forward+backward, the two forms interleaved in one process: 8x256x28x28 -> 64 8.0 -> 7.6 ms,
        # 8x16x56x56 -> 32 2.3 -> 1.8, 32x128x7x7 -> 256 2.9 -> 2.7; development probe).
        batch, spatial = xs.shape[0], xs.shape[2:]
        y = jnp.matmul(w2, xs.reshape(batch, spec.in_channels, math.prod(spatial)), precision=spec.precision,
                       preferred_element_type=spec.preferred_element_type)
        y = y.reshape(batch, spec.out_channels, *spatial)
    return y.astype(output_dtype(spec))
