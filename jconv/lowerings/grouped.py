"""Grouped convolution as dense convolutions over one group or a few merged ones, concatenated along channels.

XLA:CPU runs feature_group_count convolutions, and above all their weight gradients (which JAX expresses with
batch_group_count), through slow generic loops: a g=8 conv's forward+backward took 650 ms here, g=32 2.4 s. The
same work as G dense convs of C_in/G -> C_out/G channels hits XLA's fast dense kernels forward and backward:
7.3 ms and 17 ms (development probes; the benchmark run is benchmarks/results/cpu.md). An im2col +
batched-matmul form measured 49 and 46 ms; vmapping a dense conv over groups is turned back into
feature_group_count by JAX's batching rule (676 ms).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jconv.lowerings import xla
from jconv.lowerings.common import channel_axis
from jconv.spec import ConvSpec

NAME = "grouped"
DETERMINISTIC = True  # a fixed set of dense XLA convolutions
MAX_GROUPS = 64  # one convolution per group: compile time grows with the number of groups


def accepts(spec: ConvSpec):
    if "channel" in spec.explicit_sharding:  # it slices channels; spatial axes stay inside dense XLA convs
        return "slices the channel axis, which is sharded over an Explicit mesh axis"
    if spec.transposed:
        return "transposed convolutions are handled by the xla lowering"
    if spec.groups == 1:
        return "groups == 1: nothing to split"
    if spec.groups > MAX_GROUPS:
        return f"groups={spec.groups} > {MAX_GROUPS}: one convolution per group would compile too slowly"
    return None


# Groups of at most MERGE_MAX_IN_PER_GROUP input channels are merged, several per dense conv (a block-diagonal
# kernel), up to MERGED_IN_CHANNELS input channels: tiny dense convs cost more per FLOP than the zeros added.
# Measured forward+backward (a development probe, groups merged per conv side by side): 4x256x28x28 g=32
# (8 channels per group): 1 group per conv 22-29 ms, 2: 18-22, 4: 13-17 (this rule), 8: 32-34; 8x128x28x28 g=8
# (16 per group): 1: 11, 2: 14, 4: 32, so wider groups stay one per conv. The forward alone loses (g=32: 6.0-6.8 ms
# merged vs 4.1-5.2), but a custom_jvp computing the output unmerged and the tangents merged took 18-19 ms
# forward+backward against 11-13 merged throughout, so the merged form serves both.
MERGE_MAX_IN_PER_GROUP = 8
MERGED_IN_CHANNELS = 32


def groups_per_conv(spec: ConvSpec) -> int:
    """How many groups one dense conv computes: the largest divisor of groups within the merge budget."""
    if spec.in_per_group > MERGE_MAX_IN_PER_GROUP:
        return 1
    budget = MERGED_IN_CHANNELS // spec.in_per_group  # >= 4: in_per_group <= MERGE_MAX_IN_PER_GROUP
    return max(m for m in range(1, min(budget, spec.groups) + 1) if spec.groups % m == 0)


def lower(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    merged = groups_per_conv(spec)
    cin, cout = spec.in_per_group * merged, spec.out_per_group * merged
    block = dataclasses.replace(spec, in_channels=cin, out_channels=cout, groups=1)
    axis = channel_axis(spec)
    outputs = []
    for i in range(spec.groups // merged):
        wi = w[i * cout:(i + 1) * cout]
        if merged > 1:  # block-diagonal: group j's outputs read only group j's inputs
            wi = wi.reshape(merged, spec.out_per_group, 1, spec.in_per_group, *spec.kernel_size)
            eye = jnp.eye(merged, dtype=w.dtype).reshape(merged, 1, merged, *(1,) * (1 + spec.ndim))
            wi = (wi * eye).reshape(cout, cin, *spec.kernel_size)  # a product, not a matmul: exact on any backend
        outputs.append(xla.lower(block, jax.lax.slice_in_dim(x, i * cin, (i + 1) * cin, axis=axis), wi))
    return jnp.concatenate(outputs, axis=axis)
