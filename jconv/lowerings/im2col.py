"""Dense convolution with lax's forward and input gradient, and the weight gradient as im2col matmuls over chunks.

XLA:CPU computes a dense conv's weight gradient about 3x slower than its forward. The weight gradient is one
matmul, dW (C_out, taps x C_in) = G^T (C_out, rows) . cols (rows, taps x C_in), where cols holds, for every
output position, the input values under every tap (im2col). Built whole, cols is taps times the input; built and
consumed in chunks of rows that fit in cache, it is cheap (docs/lowerings.md, "im2col").

The rows are positions on a sample's zero-padded input grid, flattened: the output at position p reads input
row p + offset(tap), where a tap's offset is its (dilated) position flattened with the padded grid's strides. G
is laid on the same grid (its rows beyond the valid outputs are zeros), so the rows that wrap past a grid row
are multiplied by zeros. This needs stride 1 (a strided output does not sit on a grid of input rows). Rows of
contiguous channels need channels-last input: a channels-first one is moved to channels-last and the output
back, and still gains.

The rule is a custom_jvp whose weight tangent is the chunked conv (chunked_conv), each chunk rematerialized:
reverse mode transposes it into the chunked weight gradient, and forward mode still works.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jconv.lowerings import xla
from jconv.lowerings.common import (
    accumulation_dtype, sharding_refusal, transposed_refusal, with_weight_tangent, zero_pad)
from jconv.spec import ConvSpec

NAME = "im2col"
DETERMINISTIC = True  # lax's convolutions and a fixed loop of matmuls
# Bytes of one chunk's columns, by variant: 4 MiB measured best (docs/lowerings.md, "im2col"); 256 bytes is
# one or a few rows per chunk, the least memory.
CHUNK_BYTES = {"chunk-4MiB": 4 << 20, "chunk-1MiB": 1 << 20, "chunk-16MiB": 16 << 20, "chunk-256B": 256}


def variants(spec: ConvSpec) -> Tuple[str, ...]:
    return tuple(CHUNK_BYTES)


def refusal(spec: ConvSpec) -> Optional[str]:
    if refusal := sharding_refusal(spec, does="flattens") or transposed_refusal(spec):
        return refusal
    if spec.groups != 1:
        return f"needs groups == 1, but got groups={spec.groups}"
    if any(s != 1 for s in spec.stride):
        return f"needs stride 1, but got stride={spec.stride}"
    return None


def chunked_conv(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    """The conv of x (N, *spatial, C_in) as im2col matmuls over chunks of rows, (N, *out_spatial, C_out).

    Used as the weight tangent map: reverse mode transposes it into the chunked weight gradient, per chunk
    cols^T . g. Each chunk's step is rematerialized, so that the linearization keeps only its start (not its
    columns) and the transposed loop rebuilds one chunk's columns at a time. A chunk is the same rows of every
    sample: the loop slices the row axis, never the batch axis, so a batch-sharded input stays sharded (slicing
    a sharded axis would make GSPMD gather it)."""
    xp = zero_pad(spec, x)  # (N, *padded, C_in)
    n, padded = xp.shape[0], xp.shape[1:-1]
    rows = math.prod(padded)  # per sample
    grid_strides = [math.prod(padded[i + 1:]) for i in range(spec.ndim)]
    offsets = [sum(t * d * s for t, d, s in zip(tap, spec.dilation, grid_strides))
               for tap in itertools.product(*map(range, spec.kernel_size))]
    taps, cin, cout = len(offsets), spec.in_channels, spec.out_channels
    # Half-precision operands are widened: the transposed loop sums the chunks' weight gradients in the weight's
    # dtype, float32 here, as PyTorch accumulates them.
    acc = accumulation_dtype(spec)
    chunk_bytes = CHUNK_BYTES[spec.variant or variants(spec)[0]]
    chunk = max(1, min(rows, chunk_bytes // max(1, n * taps * cin * jnp.dtype(acc).itemsize)))
    chunks = -(-rows // chunk)
    # Rows past the end of each sample: the last chunk's and the largest offset's reach.
    xf = jnp.pad(xp.reshape(n, rows, cin), ((0, 0), (0, chunks * chunk - rows + offsets[-1]), (0, 0)))
    wm = jnp.moveaxis(w, 1, -1).reshape(cout, taps * cin).astype(acc)  # (C_out, taps x C_in), xf's column order

    # Rows that are no output position (past an output row's end on the grid, or past the grid) wrap onto inputs
    # that the output gradient meets only with its zeros; 0 * NaN is NaN, so they are zeroed instead, and a
    # non-finite input stays out of weight gradients that lax and torch leave finite.
    grid = np.indices(padded).reshape(spec.ndim, -1)
    is_output = np.zeros(chunks * chunk, bool)
    is_output[:rows] = np.all(grid < np.asarray(spec.out_spatial)[:, None], axis=0)

    @functools.partial(jax.checkpoint, prevent_cse=False)
    def chunk_rows(start, wm):
        cols = jnp.concatenate([lax.dynamic_slice_in_dim(xf, start + off, chunk, axis=1) for off in offsets],
                               axis=2)  # (N, chunk, taps x C_in)
        keep = lax.dynamic_slice_in_dim(jnp.asarray(is_output), start, chunk)[None, :, None]
        cols = jnp.where(keep, cols, jnp.zeros((), cols.dtype))
        return lax.dot_general(cols.astype(acc), wm, (((2,), (1,)), ((), ())), precision=spec.precision)

    y = lax.map(lambda start: chunk_rows(start, wm), jnp.arange(chunks) * chunk)  # (chunks, N, chunk, C_out)
    y = jnp.moveaxis(y, 0, 1).reshape(n, chunks * chunk, cout)[:, :rows].reshape(n, *padded, cout)
    # Output position p sits at padded-grid row p (top-left anchored); the rest of the grid is discarded.
    return y[(slice(None), *(slice(0, o) for o in spec.out_spatial))].astype(x.dtype)


_with_chunked_weight_gradient = with_weight_tangent(xla.conv, chunked_conv)


def lower(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    if spec.channels_last:
        return _with_chunked_weight_gradient(spec, x, w)
    # Channels-first: the rows need contiguous channels, so x goes channels-last and the output back.
    y = _with_chunked_weight_gradient(dataclasses.replace(spec, channels_last=True), jnp.moveaxis(x, 1, -1), w)
    return jnp.moveaxis(y, -1, 1)
