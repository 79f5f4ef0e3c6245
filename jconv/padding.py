"""The four padding modes, applied exactly as PyTorch's F.pad does before a 'valid' convolution.

'zeros' is not applied here: its amounts travel in the spec and each lowering folds them into the
convolution itself (for lax that means no extra pad op in the HLO). The other modes become one jnp.pad, whose
'reflect'/'edge'/'wrap' modes are built from slices, reversals and concatenation. That matters on GPU: a
gather-based pad would have a scatter-add gradient, which is not deterministic.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jconv.lowerings.common import spatial_axes
from jconv.spec import ConvSpec

# PyTorch's padding_mode -> jnp.pad's mode.
_JNP_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def apply_padding_mode(spec: ConvSpec, x: jax.Array) -> jax.Array:
    """Pad a batched input for a non-zero padding_mode; the identity for 'zeros' (done by the lowering)."""
    if spec.padding_mode == "zeros" or spec.transposed:
        return x
    widths = [(0, 0)] * x.ndim
    for axis, pad in zip(spatial_axes(spec), spec.padding):
        widths[axis] = pad
    return jnp.pad(x, widths, mode=_JNP_MODE[spec.padding_mode])
