"""3-D convolution as ONE 2-D convolution over depth planes, with the depth taps stacked into channels.

XLA:CPU's 3-D convolutions run far below its 2-D ones. Output depth plane z only reads input planes z*s + t*d
(t < kd), so stacking those kd planes along channels, in channels-last layout, makes every output plane a 2-D
conv with kd*C input channels, about 3x faster than XLA's 3-D conv forward+backward (docs/lowerings.md,
"planes", with the alternatives measured).

Groups stay groups: the stacked channels are ordered (group, depth tap, channel), so a grouped 3-D conv is a
grouped 2-D conv. The 2-D conv goes through dispatch like any other (1x1 planes become a matmul, groups the
grouped lowering, dense ones lax's own). The cost is memory: the stacked input is kd times the input.

Sharding: batch and H/W shardings are kept (batch is the major factor of the merged batch axis). A depth-sharded
input cannot stay sharded through that merge; GSPMD gathers it (correct, replicated). Merging depth into H instead
(one tall image per sample) keeps depth shardings but measured slower and moved strided convs with uneven
shards into an XLA SPMD bug that returns wrong weight gradients (docs/devices.md).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from jconv.lowerings import lower_inner
from jconv.lowerings.common import sharding_refusal, transposed_refusal
from jconv.spec import ConvSpec

NAME = "planes"
DETERMINISTIC = True  # slices and reshapes around a deterministic 2-D lowering


def variants(spec: ConvSpec) -> Tuple[str, ...]:
    return ("default",)


def refusal(spec: ConvSpec) -> Optional[str]:
    if refusal := sharding_refusal(spec, does="reshapes") or transposed_refusal(spec):
        return refusal
    if spec.ndim != 3:
        return f"needs a 3-D convolution, but got a {spec.ndim}-D one"
    return None


def lower(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    kd, sd, dd = spec.kernel_size[0], spec.stride[0], spec.dilation[0]
    depth_out = spec.out_spatial[0]
    g, cg = spec.groups, spec.in_per_group
    xl = x if spec.channels_last else jnp.moveaxis(x, 1, -1)  # (N, D, H, W, C)
    lo, hi = spec.lowering_padding[0]
    xl = lax.pad(xl, jnp.zeros((), xl.dtype), [(0, 0, 0), (lo, hi, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0)])
    n, _, h, wd, _ = xl.shape
    planes = [lax.slice_in_dim(xl, t * dd, t * dd + (depth_out - 1) * sd + 1, sd, axis=1).reshape(
        n, depth_out, h, wd, g, 1, cg) for t in range(kd)]
    # Batch stays the major factor of the merged batch axis, so a batch-sharded input stays sharded.
    stacked = jnp.concatenate(planes, axis=5).reshape(n * depth_out, h, wd, g * kd * cg)
    # (O, C/g, kd, kh, kw) -> (O, kd*C/g, kh, kw), input channel index t*C/g + c: the order stacked above.
    w2 = jnp.moveaxis(w, 2, 1).reshape(spec.out_channels, kd * cg, *spec.kernel_size[1:])
    inner = dataclasses.replace(
        spec, op="conv2d", ndim=2, batched=True, channels_last=True, batch=n * depth_out, in_channels=g * kd * cg,
        in_spatial=(h, wd), kernel_size=spec.kernel_size[1:], stride=spec.stride[1:],
        padding=spec.lowering_padding[1:], dilation=spec.dilation[1:], output_padding=(0, 0), padding_mode="zeros",
        has_bias=False, lowering="auto")
    y = lower_inner(inner, stacked, w2)
    y = y.reshape(n, depth_out, *y.shape[1:])  # (N, D_out, H_out, W_out, C_out)
    return y if spec.channels_last else jnp.moveaxis(y, -1, 1)
