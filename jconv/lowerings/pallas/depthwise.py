"""Depthwise convolution (groups == C_in, any channel multiplier) as hand-written Pallas kernels.

One module, in the style of jax.experimental.pallas.ops: the kernels, their wrappers (a custom_vjp over them),
block sizes in a frozen dataclass, and a plain-jnp reference.

Design (channels-last tiles; 1-D convs run as 2-D with height 1):
- Forward kernel: grid (batch, channel tiles, output-row tiles). Each program accumulates a (BH, BW, BC) float32
  output tile over the kernel taps, each tap one shifted (dilated) load of a (BH, BW, BC) input tile times that
  tap's per-channel weights. Strided convs compute the stride-1 output and subsample it in the wrapper.
- Input gradient: the same forward kernel over the stride-dilated output gradient with the flipped kernel.
- Weight gradient kernel: grid (batch, channel tiles, row tiles); each program writes the partial sums of its
  tile for every tap; the wrapper adds the partials in a fixed order. No atomics: deterministic.
- Triton needs power-of-2 shapes for every in-kernel array: the wrapper zero-pads rows, columns, channels and
  the kernel to powers of two (and slices the result), so the kernels never need masks.

On CPU the kernels run in interpret mode (for tests); auto never picks them there. They have not been run on a
GPU yet (none was available): benchmarks/pallas_depthwise_gpu.py is the one command that checks and times them.
Forward-mode autodiff (jvp) is not available through the custom_vjp; the error names another lowering.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax._src import core as jax_core  # the trace stack, read only to word forward mode's error
from jax.experimental import pallas as pl
from jax.interpreters import ad

from jconv.lowerings import xla
from jconv.lowerings.common import input_grad_dilation, output_dtype, target_platform, with_exact_fallback
from jconv.spec import ConvSpec

NAME = "pallas"
DETERMINISTIC = True  # fixed-order partial sums, no atomics


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tile sizes. Defaults are untuned guesses (no GPU was available to measure): rows per program and
    channels per program; the width is always the whole (padded) row."""

    block_h: int = 8
    block_c: int = 32
    num_warps: int = 4
    num_stages: int = 2


# Named block sizes, the untuned default first: the variants autotune measures on a GPU.
BLOCK_SIZES = {
    "bh8-bc32": BlockSizes(8, 32),
    "bh4-bc64": BlockSizes(4, 64),
    "bh16-bc16": BlockSizes(16, 16),
    "bh2-bc128": BlockSizes(2, 128),
}


def variants(spec: ConvSpec) -> Tuple[str, ...]:
    return tuple(BLOCK_SIZES)


def tuning_refusal(spec: ConvSpec) -> Optional[str]:
    """Why autotune does not time this lowering for `spec`: off a GPU the kernels run in interpret mode, a
    correctness check that is never fast."""
    return None if not _interpret(spec) else "runs in Pallas interpret mode off a GPU: for testing, never fast"


def _blocks(spec: ConvSpec) -> BlockSizes:
    return BLOCK_SIZES[spec.variant or variants(spec)[0]]


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _interpret(spec: ConvSpec) -> bool:
    """Interpret mode everywhere but on GPU: the kernels are written for Triton."""
    return target_platform(spec) != "gpu"


def _compiler_params(blocks: BlockSizes, interpret: bool):
    if interpret:
        return None
    from jax.experimental.pallas import triton as pltriton

    return pltriton.CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages)


# --- kernels ------------------------------------------------------------------------------------------------


MAX_UNROLLED_TAPS = 64  # beyond this, kernel rows are a loop: full unrolling of 31x31 took minutes to compile


def _rows(kh: int, kw: int, body, carry):
    """Run body(i, carry) for every kernel row: unrolled for small kernels, a loop for large ones."""
    if kh * kw <= MAX_UNROLLED_TAPS:
        for i in range(kh):
            carry = body(i, carry)
        return carry
    return jax.lax.fori_loop(0, kh, body, carry)


def _acc_dtype(*refs):
    """float32 accumulation for half types; float64 (an input's, or a wider output's) keeps float64."""
    return functools.reduce(jnp.promote_types, [r.dtype for r in refs], jnp.dtype(jnp.float32))


def _forward_kernel(x_ref, w_ref, o_ref, *, kh: int, kw: int, dh: int, dw: int, block_h: int, block_w: int):
    row0 = pl.program_id(2) * block_h

    def row(i, acc):
        for j in range(kw):
            tile = x_ref[0, pl.ds(row0 + i * dh, block_h), pl.ds(j * dw, block_w), :]
            acc += tile.astype(acc.dtype) * w_ref[i, j, :].astype(acc.dtype)
        return acc

    acc = _rows(kh, kw, row, jnp.zeros((block_h, block_w, o_ref.shape[-1]), _acc_dtype(x_ref, o_ref)))
    o_ref[0] = acc.astype(o_ref.dtype)


def _weight_grad_kernel(x_ref, g_ref, o_ref, *, kh: int, kw: int, dh: int, dw: int, block_h: int, block_w: int):
    row0 = pl.program_id(2) * block_h
    g = g_ref[0].astype(o_ref.dtype)  # (BH, BW, BC)
    # Taps beyond the real kernel (power-of-2 padding) stay zero.
    o_ref[0, 0] = jnp.zeros(o_ref.shape[2:], o_ref.dtype)

    def row(i, carry):
        for j in range(kw):
            tile = x_ref[0, pl.ds(row0 + i * dh, block_h), pl.ds(j * dw, block_w), :].astype(o_ref.dtype)
            o_ref[0, 0, i, j, :] = jnp.sum(jnp.sum(tile * g, axis=0), axis=0)
        return carry

    _rows(kh, kw, row, 0)


# --- wrappers -----------------------------------------------------------------------------------------------


def _layout(x, h_out, w_out, kernel, dilation, blocks: BlockSizes):
    """Padded sizes: output tile grid, and an input big enough for every shifted tile load."""
    kh, kw = kernel
    dh, dw = dilation
    bh = min(blocks.block_h, _pow2(h_out))
    bw = _pow2(w_out)
    bc = min(blocks.block_c, _pow2(x.shape[-1]))
    h_tiles = -(-h_out // bh)
    c_pad = -(-x.shape[-1] // bc) * bc
    # Every shifted tile load must stay inside the (zero-padded) input; never crop the real input.
    h_in = _pow2(max(h_tiles * bh + dh * (kh - 1), x.shape[1]))
    w_in = _pow2(max(bw + dw * (kw - 1), x.shape[2]))
    return bh, bw, bc, h_tiles, c_pad, h_in, w_in


def _pad_to(a, shape):
    return jnp.pad(a, [(0, t - s) for s, t in zip(a.shape, shape)])


def depthwise_stride1(x, w, dilation, blocks: BlockSizes = BlockSizes(), *, interpret: bool = True,
                      out_dtype=None):
    """y[n, h, w, c] = sum_ij x[n, h + i*dh, w + j*dw, c] * w[i, j, c] over an already padded NHWC input.

    x: (N, H, W, C); w: (KH, KW, C). Output (N, H - dh*(KH-1), W - dw*(KW-1), C) in out_dtype (default x's),
    accumulated in at least float32 and at least out_dtype.
    """
    n, h, wd, c = x.shape
    kh, kw = w.shape[:2]
    h_out, w_out = h - dilation[0] * (kh - 1), wd - dilation[1] * (kw - 1)
    bh, bw, bc, h_tiles, c_pad, h_in, w_in = _layout(x, h_out, w_out, (kh, kw), dilation, blocks)
    xp = _pad_to(x, (n, h_in, w_in, c_pad))
    wp = _pad_to(w, (_pow2(kh), _pow2(kw), c_pad))
    kernel = functools.partial(_forward_kernel, kh=kh, kw=kw, dh=dilation[0], dw=dilation[1], block_h=bh,
                               block_w=bw)
    y = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((n, h_tiles * bh, bw, c_pad), out_dtype or x.dtype),
        grid=(n, c_pad // bc, h_tiles),
        in_specs=[pl.BlockSpec((1, h_in, w_in, bc), lambda b, ci, hi: (b, 0, 0, ci)),
                  pl.BlockSpec((wp.shape[0], wp.shape[1], bc), lambda b, ci, hi: (0, 0, ci))],
        out_specs=pl.BlockSpec((1, bh, bw, bc), lambda b, ci, hi: (b, hi, 0, ci)),
        interpret=interpret,
        compiler_params=_compiler_params(blocks, interpret),
    )(xp, wp)
    return y[:, :h_out, :w_out, :c]


def depthwise_weight_grad(x, g, kernel, dilation, blocks: BlockSizes = BlockSizes(), *, interpret: bool = True):
    """dW[i, j, c] = sum_{n,h,w} x[n, h + i*dh, w + j*dw, c] * g[n, h, w, c], in at least float32 (fixed-order
    sums: per-tile partials, then one XLA reduction)."""
    n, h, wd, c = x.shape
    kh, kw = kernel
    h_out, w_out = g.shape[1:3]
    bh, bw, bc, h_tiles, c_pad, h_in, w_in = _layout(x, h_out, w_out, kernel, dilation, blocks)
    xp = _pad_to(x, (n, h_in, w_in, c_pad))
    gp = _pad_to(g, (n, h_tiles * bh, bw, c_pad))  # zeros beyond the output contribute nothing
    khp, kwp = _pow2(kh), _pow2(kw)
    body = functools.partial(_weight_grad_kernel, kh=kh, kw=kw, dh=dilation[0], dw=dilation[1], block_h=bh,
                             block_w=bw)
    partials = pl.pallas_call(
        body,
        out_shape=jax.ShapeDtypeStruct((n, h_tiles, khp, kwp, c_pad), jnp.promote_types(x.dtype, jnp.float32)),
        grid=(n, c_pad // bc, h_tiles),
        in_specs=[pl.BlockSpec((1, h_in, w_in, bc), lambda b, ci, hi: (b, 0, 0, ci)),
                  pl.BlockSpec((1, bh, bw, bc), lambda b, ci, hi: (b, hi, 0, ci))],
        out_specs=pl.BlockSpec((1, 1, khp, kwp, bc), lambda b, ci, hi: (b, hi, 0, 0, ci)),
        interpret=interpret,
        compiler_params=_compiler_params(blocks, interpret),
    )(xp, gp)
    return jnp.sum(partials, axis=(0, 1))[:kh, :kw, :c]  # a fixed-order XLA reduction


# --- the lowering -------------------------------------------------------------------------------------------


def refusal(spec: ConvSpec) -> Optional[str]:
    if spec.explicit_sharding:
        return "pallas_call is not partitioned: inputs sharded over an Explicit mesh axis are not supported"
    if spec.transposed:
        return "transposed convolutions are not implemented as Pallas kernels"
    if not spec.is_depthwise:
        return f"needs a depthwise conv (groups == in_channels), but in_channels/groups = {spec.in_per_group}"
    if spec.ndim == 3:
        return "3-D depthwise convolutions are not implemented as Pallas kernels"
    if jnp.issubdtype(spec.dtype, jnp.complexfloating):
        return f"the kernels take real dtypes, but got {spec.dtype.name}"
    return None


def _to_nhwc(spec: ConvSpec, x):
    """Batched input in the spec's layout -> (N, H, W, C) (1-D: H = 1)."""
    if not spec.channels_last:
        x = jnp.moveaxis(x, 1, -1)
    return x[:, None] if spec.ndim == 1 else x


def _from_nhwc(spec: ConvSpec, y):
    y = y[:, 0] if spec.ndim == 1 else y
    return y if spec.channels_last else jnp.moveaxis(y, -1, 1)


def _geometry(spec: ConvSpec):
    two = (lambda t: (1,) + tuple(t)) if spec.ndim == 1 else tuple
    pads = ((0, 0),) + tuple(spec.lowering_padding) if spec.ndim == 1 else tuple(spec.lowering_padding)
    return two(spec.kernel_size), two(spec.stride), two(spec.dilation), pads


def _weights_hwc(spec: ConvSpec, w):
    """(C_out, 1, *k) -> (KH, KW, C_out)."""
    k, _, _, _ = _geometry(spec)
    return jnp.moveaxis(w.reshape(spec.out_channels, *k), 0, -1)


def _expand(spec: ConvSpec, x):
    multiplier = spec.channel_multiplier
    return x if multiplier == 1 else jnp.repeat(x, multiplier, axis=-1)


def _forward(spec: ConvSpec, x, w):
    kernel, stride, dilation, pads = _geometry(spec)
    xh = _expand(spec, _to_nhwc(spec, x))
    xh = jnp.pad(xh, [(0, 0), *pads, (0, 0)])
    y = depthwise_stride1(xh, _weights_hwc(spec, w), dilation, _blocks(spec), interpret=_interpret(spec),
                          out_dtype=output_dtype(spec))
    out = spec.out_spatial if spec.ndim == 2 else (1, *spec.out_spatial)
    y = y[:, ::stride[0], ::stride[1]][:, :out[0], :out[1]]
    return _from_nhwc(spec, y.astype(output_dtype(spec)))


def _grad_input(spec: ConvSpec, w, g):
    _, _, dilation, pads = _geometry(spec)
    gh = _to_nhwc(spec, g)
    in_sp = spec.lowering_in_spatial if spec.ndim == 2 else (1, *spec.lowering_in_spatial)
    rows = [] if spec.ndim == 2 else [(0, 0, 0)]  # 1-D runs as 2-D with a height of 1
    config = [(0, 0, 0), *rows, *input_grad_dilation(spec), (0, 0, 0)]
    g_dilated = jax.lax.pad(gh, jnp.zeros((), gh.dtype), config)
    flipped = _weights_hwc(spec, w)[::-1, ::-1]
    gx = depthwise_stride1(g_dilated, flipped.astype(g_dilated.dtype), dilation, _blocks(spec),
                           interpret=_interpret(spec))
    multiplier = spec.channel_multiplier
    if multiplier > 1:
        gx = gx.reshape(*gx.shape[:-1], spec.in_channels, multiplier).sum(-1)
    gx = gx[:, pads[0][0]:pads[0][0] + in_sp[0], pads[1][0]:pads[1][0] + in_sp[1]]
    return _from_nhwc(spec, gx)


def _grad_weight(spec: ConvSpec, x, g):
    kernel, stride, dilation, pads = _geometry(spec)
    xh = jnp.pad(_expand(spec, _to_nhwc(spec, x)), [(0, 0), *pads, (0, 0)])
    gh = _to_nhwc(spec, g)
    if any(s > 1 for s in stride):  # scatter the strided gradient onto the stride-1 output grid
        config = [(0, 0, 0)] + [(0, 0, s - 1) for s in stride] + [(0, 0, 0)]
        gh = jax.lax.pad(gh, jnp.zeros((), gh.dtype), config)
    dw = depthwise_weight_grad(xh, gh, kernel, dilation, _blocks(spec), interpret=_interpret(spec))  # (KH, KW, C_out)
    return jnp.moveaxis(dw, -1, 0).reshape(spec.out_channels, 1, *spec.kernel_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _depthwise(spec: ConvSpec, x, w):
    return _forward(spec, x, w)


def _depthwise_fwd(spec, x, w):
    return _forward(spec, x, w), (x, w)


def _depthwise_bwd(spec, residuals, g):
    x, w = residuals
    return _grad_input(spec, w, g).astype(x.dtype), _grad_weight(spec, x, g).astype(w.dtype)


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def _under_forward_mode() -> bool:
    """Whether a jvp (jax.jvp, jacfwd, hessian) is tracing this call; no public API says so."""
    trace = jax_core.trace_ctx.trace
    while trace is not None:
        if isinstance(trace, ad.JVPTrace):
            return True
        trace = getattr(trace, "parent_trace", None)
    return False


def _depthwise_reverse_mode_only(spec: ConvSpec, x, w):
    try:
        return _depthwise(spec, x, w)
    except (TypeError, AssertionError) as e:
        # JAX says only "custom_vjp" (jvp) or nothing at all (hessian): name the lowering and the remedy.
        if not _under_forward_mode():
            raise
        raise ValueError(
            f"{spec.op}: lowering='pallas' has reverse-mode gradients only (jax.grad, jax.vjp); forward-mode "
            "autodiff (jax.jvp, jax.jacfwd, jax.hessian) does not go through its kernels. Use another lowering "
            "for it, e.g. lowering='auto' or lowering='xla'."
        ) from e


# The kernels multiply weights and inputs by the zeros that pad their tiles: a NaN or inf operand would meet them
# (docs/semantics.md, "Non-finite values"). Then lax runs instead.
lower = with_exact_fallback(_depthwise_reverse_mode_only, xla.lower)

