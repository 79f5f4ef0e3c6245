"""Grouped convolution as one dense convolution per group, concatenated along channels.

XLA:CPU runs feature_group_count convolutions, and above all their weight gradients (which JAX expresses with
batch_group_count), through slow generic loops: a g=8 conv's forward+backward took 650 ms here, g=32 2.4 s. The
same work as G dense convs of C_in/G -> C_out/G channels hits XLA's fast dense kernels forward and backward:
7.3 ms and 17 ms (development probes; the benchmark run is benchmarks/results/cpu.md). An im2col + batched-matmul form measured 49 and 46 ms; vmapping a
dense conv over groups is turned back into feature_group_count by JAX's batching rule (676 ms).
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


def lower(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    cin, cout = spec.in_per_group, spec.out_per_group
    one_group = dataclasses.replace(spec, in_channels=cin, out_channels=cout, groups=1)
    axis = channel_axis(spec)
    outputs = [
        xla.lower(one_group, jax.lax.slice_in_dim(x, i * cin, (i + 1) * cin, axis=axis), w[i * cout:(i + 1) * cout])
        for i in range(spec.groups)
    ]
    return jnp.concatenate(outputs, axis=axis)
