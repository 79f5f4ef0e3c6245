"""Grouped convolution as dense convolutions over one group or a few merged ones, concatenated along channels.

XLA:CPU runs feature_group_count convolutions, and above all their weight gradients (which JAX expresses with
batch_group_count), through slow generic loops; the same work as G dense convs of C_in/G -> C_out/G channels hits
XLA's fast dense kernels forward and backward (docs/lowerings.md, "grouped"). Vmapping a dense conv over groups
does not help: JAX's batching rule turns it back into feature_group_count.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from jconv.lowerings import xla
from jconv.lowerings.common import channel_axis, sharding_refusal, transposed_refusal, with_weight_tangent
from jconv.spec import ConvSpec

NAME = "grouped"
DETERMINISTIC = True  # a fixed set of dense XLA convolutions
MAX_GROUPS = 64  # one convolution per group: compile time grows with the number of groups


def refusal(spec: ConvSpec) -> Optional[str]:
    # Only a sharded channel axis is refused: the spatial axes stay inside XLA's convs.
    if refusal := sharding_refusal(spec, ("channel",), does="slices") or transposed_refusal(spec):
        return refusal
    if spec.groups == 1:
        return "groups == 1: nothing to split"
    if spec.groups > MAX_GROUPS:
        return f"groups={spec.groups} > {MAX_GROUPS}: one convolution per group would compile too slowly"
    return None


# Groups of at most MERGE_MAX_IN_PER_GROUP input channels may have their weight gradient computed merged, several
# per dense conv (a block-diagonal kernel), up to MERGED_IN_CHANNELS input channels: tiny dense convs cost more per
# FLOP than the zeros added. The rule merges only where that holds (docs/lowerings.md, "grouped"): each group's
# weight gradient is at most MERGE_MAX_GROUP_MACS multiply-adds, and no axis is padded by more than half its
# window, where XLA's weight-gradient conv pays for every zero of the merged kernel. The forward and the input
# gradient stay one conv per group: a merged one multiplies one group's inputs by the zeros of the others'
# blocks, so a NaN or inf input would reach every group's outputs.
MERGE_MAX_IN_PER_GROUP = 8
MERGED_IN_CHANNELS = 32
MERGE_MAX_GROUP_MACS = 1 << 16


def _merge_budget(spec: ConvSpec) -> int:
    """The largest divisor of groups whose merged conv stays within MERGED_IN_CHANNELS input channels (1 for
    groups wider than MERGE_MAX_IN_PER_GROUP)."""
    if spec.in_per_group > MERGE_MAX_IN_PER_GROUP:
        return 1
    budget = MERGED_IN_CHANNELS // spec.in_per_group  # >= 4: in_per_group <= MERGE_MAX_IN_PER_GROUP
    return max(m for m in range(1, min(budget, spec.groups) + 1) if spec.groups % m == 0)


def group_weight_grad_macs(spec: ConvSpec) -> int:
    """Multiply-adds of one group's weight gradient."""
    return (spec.batch * math.prod(spec.out_spatial) * spec.in_per_group * spec.out_per_group
            * math.prod(spec.kernel_size))


def _over_padded(spec: ConvSpec) -> bool:
    return any(2 * max(pad) > d * (k - 1)
               for pad, k, d in zip(spec.lowering_padding, spec.kernel_size, spec.dilation))


def groups_per_conv(spec: ConvSpec) -> int:
    """The rule: how many groups one dense conv of the weight gradient computes."""
    if group_weight_grad_macs(spec) > MERGE_MAX_GROUP_MACS or _over_padded(spec):
        return 1
    return _merge_budget(spec)


def variants(spec: ConvSpec) -> Tuple[str, ...]:
    """"merge-m": m groups per dense conv of the weight gradient; the rule's m first, then one and two groups per
    conv, and the merge budget's m with its half and double, where they divide the groups (each variant compiles
    its own set of convs, so autotune times a few, not every divisor)."""
    budget = _merge_budget(spec)
    nearby = [1, budget, budget // 2, budget * 2, 2]
    possible = [m for m in nearby
                if m >= 1 and spec.groups % m == 0 and m * spec.in_per_group <= 2 * MERGED_IN_CHANNELS]
    return tuple(f"merge-{m}" for m in dict.fromkeys([groups_per_conv(spec), *possible]))


def _merged(spec: ConvSpec) -> int:
    return int((spec.variant or variants(spec)[0]).removeprefix("merge-"))


def dense_convs(spec: ConvSpec, x: jax.Array, w: jax.Array, merged: int = 1) -> jax.Array:
    """The grouped conv as dense convs over `merged` groups each, concatenated along channels.

    Merged groups share one dense conv whose kernel is block-diagonal, built with a select (not a product with
    an identity, which would turn an inf weight into NaN): group j's outputs read only group j's weights. Its
    products with the off-diagonal zeros still meet every group's inputs, so merged > 1 is exact only for finite
    x; its transpose with respect to w (the weight gradient) selects the diagonal blocks and is exact always.
    """
    cin, cout = spec.in_per_group * merged, spec.out_per_group * merged
    block = dataclasses.replace(spec, in_channels=cin, out_channels=cout, groups=1)
    axis = channel_axis(spec)
    diagonal = np.kron(np.eye(merged, dtype=bool), np.ones((spec.out_per_group, spec.in_per_group), bool))
    diagonal = diagonal.reshape(cout, cin, *(1,) * spec.ndim)
    outputs = []
    for i in range(spec.groups // merged):
        wi = w[i * cout:(i + 1) * cout]
        if merged > 1:
            wi = jnp.concatenate([wi] * merged, axis=1)  # (cout, cin, *k): every block holds its rows' weights
            wi = jnp.where(diagonal, wi, jnp.zeros((), w.dtype))
        outputs.append(xla.lower(block, jax.lax.slice_in_dim(x, i * cin, (i + 1) * cin, axis=axis), wi))
    return jnp.concatenate(outputs, axis=axis)


# Reverse mode transposes the merged weight tangent into the merged weight gradient, which is exact (see
# dense_convs). Forward mode gets the merged conv of x itself, exact for finite x only (docs/semantics.md,
# "Non-finite values").
_with_merged_weight_gradient = with_weight_tangent(
    dense_convs, lambda spec, x, tw: dense_convs(spec, x, tw, merged=_merged(spec)))


def lower(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    if _merged(spec) == 1:
        return dense_convs(spec, x, w)
    return _with_merged_weight_gradient(spec, x, w)
