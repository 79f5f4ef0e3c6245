"""Pointwise (1x1...) convolution as one matrix product over channels.

A kernel of size 1 is a matmul between the (strided) input and the (C_out, C_in) weight. XLA:CPU's convolution
emitter is slower at it than its dot: 8x256x28x28 -> 64 forward+backward 15.2 ms as a lax conv, 7.1 ms as an
einsum (NCHW; 9.8 vs 3.1 ms channels-last; a development probe, the benchmark run is
benchmarks/results/cpu.md). Channels-first, the product is taken per sample where that avoids transposing
copies of the input and output (`per_sample`).
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


# Channels-first, the product can be taken per sample, a batched matmul (C_out, C_in) x (C_in, positions) over N
# that reads the input and writes the output where they lie, or as one matmul over all samples, which XLA:CPU
# feeds with a transposing copy of the input, (C_in, N x positions), and whose (C_out, N x positions) result it
# copies back. The per-sample form wins where each sample's matrix is wide or the whole product is small (the
# copies are the cost); with few positions per sample and many channels the one matmul wins, the per-sample
# one's weight gradient (a product per sample, then their sum) worst of all. Forward+backward ms, the two forms
# interleaved in one process, medians of 5 rounds (development probe, float32, N x C_in x H x W -> C_out):
# per sample better: 8x64x56x56 -> 256 54.9 -> 23.9, 8x256x56x56 -> 64 56.6 -> 28.6, 8x256x48x48 -> 256
# 97.6 -> 66.5, 16x32x64x64 -> 64 25.5 -> 15.5, 2x3x112x112 -> 64 2.42 -> 1.46, 8x32x40x40 -> 32 1.94 -> 1.38,
# 4x32x14x14 -> 64 0.45-0.55 -> 0.35-0.37, 4x64x10x10 -> 128 0.59 -> 0.47, 8x32x7x7 -> 64 0.36 -> 0.29;
# about even: 8x16x56x56 -> 32 1.86 / 1.80, 16x64x12x12 -> 64 1.06 / 0.97, 8x128x24x24 -> 64 3.82 / 4.05;
# one matmul better: 4x128x32x32 -> 128 3.84 / 4.36, 8x64x28x28 -> 256 7.25 / 9.04 (but 8x256x28x28 -> 64
# 9.29 / 7.46), 32x128x7x7 -> 256 4.17 / 11.98, 16x1024x14x14 -> 256 41.6 / 84.9, 8x512x7x7 -> 2048 23 / 164.
PER_SAMPLE_MIN_POSITIONS = 1600  # the smallest measured win above; 1024 lost
PER_SAMPLE_MAX_MACS = 2**22  # 4x64x10x10 -> 128 (3.3M) won; 16x64x12x12 -> 64 (9.4M) was even


def per_sample(spec: ConvSpec) -> bool:
    """Whether the channels-first product is a batched matmul over samples (see above) rather than one matmul."""
    positions = math.prod(spec.out_spatial)
    macs = spec.batch * spec.in_channels * spec.out_channels * positions
    return positions >= PER_SAMPLE_MIN_POSITIONS or macs <= PER_SAMPLE_MAX_MACS


def _batch_sharding(x: jax.Array):
    """x's sharding of its batch axis alone, for the broadcast weight: under Explicit mesh axes a replicated
    weight batched with a batch-sharded input would make the product replicated (an all-gather). None outside
    such meshes."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    if sharding is None or not getattr(sharding, "spec", None) or sharding.spec[0] is None:
        return None
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(sharding.spec[0], None, None))


def lower(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    xs = tap_slice(spec, zero_pad(spec, x), (0,) * spec.ndim)  # the stride, as a strided slice
    w2 = w.reshape(spec.out_channels, spec.in_channels)
    dot = dict(precision=spec.precision, preferred_element_type=spec.preferred_element_type)
    if spec.channels_last:
        y = jnp.einsum("...c,oc->...o", xs, w2, **dot)
    else:
        batch, spatial = xs.shape[0], xs.shape[2:]
        x3 = xs.reshape(batch, spec.in_channels, math.prod(spatial))
        if per_sample(spec):
            w3 = jnp.broadcast_to(w2, (batch, *w2.shape), out_sharding=_batch_sharding(x3))
            y = jax.lax.dot_general(w3, x3, (((2,), (1,)), ((0,), (0,))), **dot)
        else:
            # (C_out, C_in) @ (N, C_in, positions): the product comes out (C_out, N, positions), and XLA:CPU moves
            # it to (N, C_out, positions) in one copy. The einsum "nc...,oc->no..." made it (N, positions,
            # C_out), which XLA copied twice (a layout change, then the transpose), for the output and the input
            # gradient alike (forward+backward, the two forms interleaved in one process: 8x256x28x28 -> 64 8.0 ->
            # 7.6 ms, 8x16x56x56 -> 32 2.3 -> 1.8, 32x128x7x7 -> 256 2.9 -> 2.7; development probe).
            y = jnp.matmul(w2, x3, **dot)
        y = y.reshape(batch, spec.out_channels, *spatial)
    return y.astype(output_dtype(spec))
