"""Pointwise (1x1...) convolution as one matrix product over channels.

A kernel of size 1 is a matmul between the (strided) input and the (C_out, C_in) weight. XLA:CPU's convolution
emitter is about twice as slow at it as its dot (docs/lowerings.md, "matmul"). Channels-first, the product is
taken per sample where that avoids transposing copies of the input and output (`per_sample`).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from jconv.lowerings.common import (
    accumulation_dtype, output_dtype, sharding_refusal, tap_slice, transposed_refusal, zero_pad)
from jconv.spec import ConvSpec

NAME = "matmul"
DETERMINISTIC = True


def refusal(spec: ConvSpec) -> Optional[str]:
    if refusal := sharding_refusal(spec, ("spatial",)) or transposed_refusal(spec):
        return refusal
    if any(k != 1 for k in spec.kernel_size):
        return f"needs a kernel of size 1, but got {spec.kernel_size}"
    if spec.groups != 1:
        return "needs groups == 1 (grouped pointwise convs go to the grouped lowering)"
    return None


# Channels-first, the product can be taken per sample, a batched matmul (C_out, C_in) x (C_in, positions) over N
# that reads the input and writes the output where they lie, or as one matmul over all samples, which XLA:CPU
# feeds with a transposing copy of the input, (C_in, N x positions), and whose (C_out, N x positions) result it
# copies back. The per-sample form wins where each sample's matrix is wide or the whole product is small (the
# copies are the cost); with few positions per sample and many channels the one matmul wins. The thresholds are
# the measured boundaries (docs/lowerings.md, "matmul").
PER_SAMPLE_MIN_POSITIONS = 1600
PER_SAMPLE_MAX_MACS = 2**22


def per_sample(spec: ConvSpec) -> bool:
    """The rule: whether the channels-first product is a batched matmul over samples (see above) rather than one
    matmul."""
    positions = math.prod(spec.out_spatial)
    macs = spec.batch * spec.in_channels * spec.out_channels * positions
    return positions >= PER_SAMPLE_MIN_POSITIONS or macs <= PER_SAMPLE_MAX_MACS


def variants(spec: ConvSpec) -> Tuple[str, ...]:
    """Channels-first: "per-sample" or "one-matmul", the rule's first; channels-last has one form."""
    if spec.channels_last:
        return ("einsum",)
    return ("per-sample", "one-matmul") if per_sample(spec) else ("one-matmul", "per-sample")


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
    # Half types are summed in float32, as XLA's convolutions and torch's matmuls do (the transposed products of
    # the gradients too); the output is cast back below.
    dot = dict(precision=spec.precision,
               preferred_element_type=jnp.promote_types(output_dtype(spec), accumulation_dtype(spec)))
    if spec.channels_last:
        y = jnp.einsum("...c,oc->...o", xs, w2, **dot)
    else:
        batch, spatial = xs.shape[0], xs.shape[2:]
        x3 = xs.reshape(batch, spec.in_channels, math.prod(spatial))
        if (spec.variant or variants(spec)[0]) == "per-sample":
            # The weight gradient sums the per-sample products over the batch (the broadcast's transpose), in
            # the dtype they come out in: for half types, float32 operands keep that sum in float32.
            acc = accumulation_dtype(spec)
            w3 = jnp.broadcast_to(w2.astype(acc), (batch, *w2.shape), out_sharding=_batch_sharding(x3))
            y = jax.lax.dot_general(w3, x3.astype(acc), (((2,), (1,)), ((0,), (0,))), **dot)
        else:
            # (C_out, C_in) @ (N, C_in, positions): the product comes out (C_out, N, positions), and XLA:CPU moves
            # it to (N, C_out, positions) in one copy. The einsum "nc...,oc->no..." made it (N, positions,
            # C_out), which XLA copied twice, for the output and the input gradient alike (docs/lowerings.md).
            y = jnp.matmul(w2, x3, **dot)
        y = y.reshape(batch, spec.out_channels, *spatial)
    return y.astype(output_dtype(spec))
