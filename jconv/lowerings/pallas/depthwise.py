"""Depthwise convolution (groups == C_in, any channel multiplier) as hand-written Pallas kernels.

One module, in the style of jax.experimental.pallas.ops: the kernels, their wrappers (a custom_vjp over them),
block sizes in a frozen dataclass.

Design (docs/lowerings.md, "pallas"; channels-last tiles; 1-D convs run as 2-D with height 1):
- Nothing is padded or sliced around the kernels: taps outside the input are masked loads that read zeros, and
  output tiles are written with masked stores. The width is split into stride phases (a reshape at stride 1), so
  that every load is a contiguous run of columns; strides and dilations along the height are row arithmetic.
- Forward kernel, grid (batch, output-row tiles, output-column tiles x channel tiles). Small kernels are
  unrolled: one (BW, BC) accumulator per output row, and each input row the tile needs is loaded once per kernel
  column and added, times its tap's weights, to every output row it reaches. Large kernels loop over those input
  rows with one (BH, BW, BC) accumulator, each row times the (BH, 1, BC) weights that join it to the output rows.
- Input gradient: the same forward kernel over the stride-dilated output gradient with the flipped kernel.
- Weight gradient kernel, grid (batch, column tiles x channel tiles): each program loops over the output rows
  and writes its partial sum of every tap; the wrapper adds the partials in a fixed order. No atomics:
  deterministic.
- Half-precision inputs accumulate in float32. Block sizes are named variants that autotune measures on a GPU.

On CPU the kernels run in interpret mode (for tests); auto never picks them there. They have not been run on a
GPU yet (none was available): benchmarks/pallas_depthwise_gpu.py is the one command that checks and times them.
Forward-mode autodiff (jvp) is not available through the custom_vjp; the error names another lowering.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import core as jax_core  # the trace stack, read only to word forward mode's error
from jax.experimental import pallas as pl
from jax.interpreters import ad

from jconv.lowerings import xla
from jconv.lowerings.common import output_dtype, target_platform, with_exact_fallback
from jconv.spec import ConvSpec

NAME = "pallas"
DETERMINISTIC = True  # fixed-order partial sums, no atomics


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """What one program computes: block_h output rows (any number where the kernel is unrolled, a power of 2 in
    the row loop), block_w output columns and block_c channels (powers of 2); Triton's num_warps and num_stages;
    fma: float32 accumulation by fused multiply-add instructions (inline PTX) rather than a multiply and an add."""

    block_h: int
    block_w: int
    block_c: int
    num_warps: int = 4
    num_stages: int = 1
    fma: bool = False

    @property
    def name(self) -> str:
        return (f"bh{self.block_h}-bw{self.block_w}-bc{self.block_c}-w{self.num_warps}"
                + (f"-s{self.num_stages}" if self.num_stages != 1 else "") + ("-fma" if self.fma else ""))


def _named(*configs: BlockSizes) -> dict:
    return {blocks.name: blocks for blocks in configs}


# The variants autotune measures on a GPU, the default first, per kernel shape. The 2-D tables hold the measured
# design's best configurations and a few around them (docs/lowerings.md, "pallas").
UNROLLED_BLOCK_SIZES = _named(
    BlockSizes(7, 8, 32, 2), BlockSizes(14, 8, 32, 2), BlockSizes(14, 16, 32, 8), BlockSizes(4, 4, 128, 2),
    BlockSizes(4, 32, 64, 4), BlockSizes(7, 8, 32, 2, fma=True))
ROW_LOOP_BLOCK_SIZES = _named(
    BlockSizes(8, 8, 128, 4), BlockSizes(8, 8, 128, 8), BlockSizes(8, 8, 64, 2), BlockSizes(8, 16, 64, 4),
    BlockSizes(8, 8, 128, 4, fma=True))
ONE_D_BLOCK_SIZES = _named(  # one row: (length, channel) tiles
    BlockSizes(1, 64, 64, 4), BlockSizes(1, 32, 128, 4), BlockSizes(1, 128, 32, 4), BlockSizes(1, 16, 256, 4),
    BlockSizes(1, 64, 64, 4, fma=True))
BLOCK_SIZES = {**UNROLLED_BLOCK_SIZES, **ROW_LOOP_BLOCK_SIZES, **ONE_D_BLOCK_SIZES}

# Kernels with more taps loop over rows instead of unrolling them: compile time grows with the unrolled body.
MAX_UNROLLED_TAPS = 64
# Kernels with more rows compute their weight gradient one tap at a time (one accumulator per kernel row otherwise).
MAX_WEIGHT_GRAD_ROWS = 8
# The lowering in interpret mode (tests on CPU) computes at most this many output rows per program: the same
# code as any block_h, at a fraction of the compile time; tests/test_pallas.py runs larger tiles directly.
INTERPRET_MAX_BLOCK_H = 2
# float32 values per thread that a program's accumulators and loaded tiles may hold, of a GPU thread's 255
# registers: the rest go to addresses, masks and weights.
REGISTER_BUDGET = 96


def unrolled(kernel: Tuple[int, int]) -> bool:
    return kernel[0] * kernel[1] <= MAX_UNROLLED_TAPS


def _table(spec: ConvSpec) -> dict:
    if spec.ndim == 1:
        return ONE_D_BLOCK_SIZES
    return UNROLLED_BLOCK_SIZES if unrolled(tuple(spec.kernel_size)) else ROW_LOOP_BLOCK_SIZES


def variants(spec: ConvSpec) -> Tuple[str, ...]:
    return tuple(_table(spec))


def _weight_grad_accumulators(kh: int) -> int:
    return kh if kh <= MAX_WEIGHT_GRAD_ROWS else 1


def weight_grad_block_w(blocks: BlockSizes, kh: int) -> int:
    """The weight-gradient kernel's tile width: the forward's, halved until its accumulators (one per kernel row)
    and two loaded tiles fit REGISTER_BUDGET."""
    bw = blocks.block_w
    while bw > 1 and (_weight_grad_accumulators(kh) + 2) * bw * blocks.block_c > REGISTER_BUDGET * _threads(blocks):
        bw //= 2
    return bw


def _threads(blocks: BlockSizes) -> int:
    return 32 * blocks.num_warps


def values_per_thread(blocks: BlockSizes, kernel: Tuple[int, int]) -> Tuple[float, float]:
    """float32 values a thread holds in the forward kernel (its accumulators and one input tile, plus the
    weight tile in the row loop) and in the weight-gradient kernel (its accumulators, an input and a gradient
    tile), with a full tile of `blocks`."""
    tile = blocks.block_w * blocks.block_c
    forward = (blocks.block_h + 1) * tile + (0 if unrolled(kernel) else blocks.block_h * blocks.block_c)
    weight_grad = (_weight_grad_accumulators(kernel[0]) + 2) * weight_grad_block_w(blocks, kernel[0]) \
        * blocks.block_c
    return forward / _threads(blocks), weight_grad / _threads(blocks)


def tuning_refusal(spec: ConvSpec) -> Optional[str]:
    """Why autotune does not time this lowering for `spec`: off a GPU the kernels run in interpret mode, a
    correctness check that is never fast."""
    return None if not _interpret(spec) else "runs in Pallas interpret mode off a GPU: for testing, never fast"


def _blocks(spec: ConvSpec) -> BlockSizes:
    blocks = BLOCK_SIZES[spec.variant or variants(spec)[0]]
    if _interpret(spec):  # the unrolled body grows with the rows per tile, and so does its compile time on CPU
        blocks = dataclasses.replace(blocks, block_h=min(blocks.block_h, INTERPRET_MAX_BLOCK_H))
    return blocks


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _interpret(spec: ConvSpec) -> bool:
    """Interpret mode everywhere but on GPU: the kernels are written for Triton."""
    return target_platform(spec) != "gpu"


def _triton():
    """Pallas' Triton module, imported when a kernel is built (it is deprecated in newer jax; importing jconv
    should not warn)."""
    from jax.experimental.pallas import triton

    return triton


def _compiler_params(blocks: BlockSizes, interpret: bool):
    if interpret:
        return None
    return _triton().CompilerParams(num_warps=blocks.num_warps, num_stages=blocks.num_stages)


# --- kernels ------------------------------------------------------------------------------------------------


class _Problem(NamedTuple):
    """One depthwise correlation over an NHWC input: y[n, ho, wo, c] = sum_ij x[n, ho*sh - ph + i*dh,
    wo*sw - pw + j*dw, c] * w[i, j, c], taps outside the input reading zeros. ph and pw are the low paddings
    (negative: the first rows or columns are skipped); the output size sets how far the high side reaches."""

    h: int
    w: int
    c: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    ph: int
    pw: int
    ho: int
    wo: int

    def column(self, j: int):
        """Tap column j's input phase (the wrapper splits the width into sw phases) and its offset there: input
        column wo*sw - pw + j*dw is column wo + offset of that phase."""
        offset = j * self.dw - self.pw
        return offset % self.sw, offset // self.sw


class _Tile(NamedTuple):
    """Sizes of one program's tile and where it starts; shift: the columns the input was moved right by (in
    interpret mode, where a load cannot start before the array does)."""

    bh: int
    bw: int
    bc: int
    h0: jax.Array
    w0: jax.Array
    c0: jax.Array
    shift: int


def _acc_dtype(*refs):
    """float32 accumulation for half types; float64 (an input's, or a wider output's) keeps float64."""
    return functools.reduce(jnp.promote_types, [r.dtype for r in refs], jnp.dtype(jnp.float32))


def _int32(i):
    return jnp.int32(i) if isinstance(i, int) else i


def _at(ref, *index):
    """ref.at[index] with Python ints as int32 scalars: interpret mode indexes with arrays of one integer type."""
    return ref.at[tuple(_int32(i) for i in index)]


def _ds(start, size: int):
    return pl.ds(_int32(start), size)


def _for(n: int, body, carry):
    """fori_loop over int32 indices (with x64 enabled, Python bounds would make them int64)."""
    return jax.lax.fori_loop(jnp.int32(0), jnp.int32(n), body, carry)


def _iota(n: int) -> jax.Array:
    return jax.lax.broadcasted_iota(jnp.int32, (n,), 0)


def _tile(p: _Problem, bh: int, bw: int, bc: int, shift: int, rows_in_grid: bool = True) -> _Tile:
    """This program's tile: grid (batch, row tiles, column tiles x channel tiles), or without the row axis."""
    column_tiles = _cdiv(p.wo, bw)
    cols_and_chans = pl.program_id(2 if rows_in_grid else 1)
    h0 = pl.program_id(1) * bh if rows_in_grid else 0
    return _Tile(bh, bw, bc, h0, (cols_and_chans % column_tiles) * bw, (cols_and_chans // column_tiles) * bc, shift)


def _channel_mask(p: _Problem, t: _Tile):
    """(1, bc): the channels that exist, or None where every tile is full."""
    return None if p.c % t.bc == 0 else (t.c0 + _iota(t.bc) < p.c)[None, :]


def _input_mask(p: _Problem, t: _Tile, j: int, row, channels):
    """(bw, bc): which of tap column j's loads at input row `row` read the input (the rest read zeros)."""
    phase, offset = p.column(j)
    column = (t.w0 + _iota(t.bw) + offset) * p.sw + phase
    inside = (column >= 0) & (column < p.w) & (row >= 0) & (row < p.h)
    mask = jnp.broadcast_to(inside[:, None], (t.bw, t.bc))
    return mask if channels is None else mask & channels


def _load_input(x_ref, p: _Problem, t: _Tile, n, row, j: int, channels, rows=None):
    """Tap column j's (bw, bc) input tile at input row `row` (rows=1: a (1, bw, bc) tile), zeros outside."""
    phase, offset = p.column(j)
    mask = _input_mask(p, t, j, row, channels)
    columns, chans = _ds(t.w0 + offset + t.shift, t.bw), _ds(t.c0, t.bc)
    if rows is None:
        return _triton().load(_at(x_ref, n, row, phase, columns, chans), mask=mask, other=0)
    return _triton().load(_at(x_ref, n, _ds(row, rows), phase, columns, chans), mask=mask[None], other=0)


def _load_weights(ref, index, channels, shape_channels_last):
    if channels is None:
        return _triton().load(_at(ref, *index))
    return _triton().load(_at(ref, *index), mask=jnp.broadcast_to(channels, shape_channels_last), other=0)


def _mul_add(a, b, acc, fma: bool):
    """acc + a * b, by fused multiply-add instructions where asked for (float32 on Triton only)."""
    if not fma or acc.dtype != jnp.float32:
        return acc + a * b
    a, b = jnp.broadcast_to(a, acc.shape), jnp.broadcast_to(b, acc.shape)
    return _triton().elementwise_inline_asm(
        "fma.rn.f32 $0, $1, $2, $3;", args=[a, b, acc], constraints="=r,r,r,r", pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(acc.shape, acc.dtype)])[0]


def _output_mask(p: _Problem, t: _Tile, channels):
    """(bw, bc): the tile's output columns and channels that exist."""
    inside = jnp.broadcast_to(((t.w0 + _iota(t.bw)) < p.wo)[:, None], (t.bw, t.bc))
    return inside if channels is None else inside & channels


def _store_rows(o_ref, p: _Problem, t: _Tile, n, rows: list, channels):
    inside = _output_mask(p, t, channels)
    for i, acc in enumerate(rows):
        _triton().store(_at(o_ref, n, t.h0 + i, _ds(t.w0, t.bw), _ds(t.c0, t.bc)), acc.astype(o_ref.dtype),
                       mask=inside & (t.h0 + i < p.ho))


def _row_plan(bh: int, kh: int, sh: int, dh: int):
    """The input rows a tile of bh output rows reads, relative to its first: each once, with the (output row,
    kernel row) pairs it feeds."""
    plan = {}
    for i in range(bh):
        for a in range(kh):
            plan.setdefault(i * sh + a * dh, []).append((i, a))
    return sorted(plan.items())


def _unrolled_kernel(x_ref, w_ref, o_ref, *, p: _Problem, bh: int, bw: int, bc: int, shift: int, fma: bool):
    """One (bw, bc) accumulator per output row; each input row the tile needs is loaded once per kernel column
    and added, times its tap's weights, to every output row it reaches."""
    n, t = pl.program_id(0), _tile(p, bh, bw, bc, shift)
    channels = _channel_mask(p, t)
    acc_dtype = _acc_dtype(x_ref, o_ref)
    rows = [jnp.zeros((bw, bc), acc_dtype) for _ in range(bh)]
    for j in range(p.kw):
        weights = [_load_weights(w_ref, (a, _ds(j, 1), _ds(t.c0, bc)), channels, (1, bc)).astype(acc_dtype)
                   for a in range(p.kh)]
        for offset, uses in _row_plan(bh, p.kh, p.sh, p.dh):
            tile = _load_input(x_ref, p, t, n, t.h0 * p.sh - p.ph + offset, j, channels).astype(acc_dtype)
            for i, a in uses:
                rows[i] = _mul_add(tile, weights[a], rows[i], fma)
    _store_rows(o_ref, p, t, n, rows, channels)


def _row_loop_kernel(x_ref, wr_ref, o_ref, *, p: _Problem, bh: int, bw: int, bc: int, shift: int, fma: bool):
    """A loop over the input rows the tile needs, one (bh, bw, bc) accumulator: each row, loaded once per kernel
    column, is multiplied by the (bh, 1, bc) weights joining it to each output row (the row-weights table)."""
    n, t = pl.program_id(0), _tile(p, bh, bw, bc, shift)
    channels = _channel_mask(p, t)
    acc_dtype = _acc_dtype(x_ref, o_ref)

    def row(offset, acc):
        for j in range(p.kw):
            tile = _load_input(x_ref, p, t, n, t.h0 * p.sh - p.ph + offset, j, channels, rows=1)
            weights = _load_weights(wr_ref, (offset, slice(None), _ds(j, 1), _ds(t.c0, bc)),
                                    None if channels is None else channels[None], (bh, 1, bc))
            acc = _mul_add(tile.astype(acc_dtype), weights.astype(acc_dtype), acc, fma)
        return acc

    acc = _for(wr_ref.shape[0], row, jnp.zeros((bh, bw, bc), acc_dtype))
    inside = ((t.h0 + _iota(bh)) < p.ho)[:, None, None] & _output_mask(p, t, channels)[None]
    _triton().store(_at(o_ref, n, _ds(t.h0, bh), _ds(t.w0, bw), _ds(t.c0, bc)), acc.astype(o_ref.dtype),
                   mask=inside)


def _row_weights(w, bh: int, sh: int, dh: int):
    """(rows, bh, KW, C): entry [r, i] holds the kernel row joining input row r of a tile to its output row i
    (r = i*sh + a*dh), zeros where none does."""
    kh = w.shape[0]
    offsets = np.arange((bh - 1) * sh + dh * (kh - 1) + 1)[:, None] - sh * np.arange(bh)[None, :]
    taps = offsets // dh
    joined = (offsets >= 0) & (offsets % dh == 0) & (taps < kh)
    return jnp.where(joined[:, :, None, None], jnp.take(w, np.where(joined, taps, 0), axis=0),
                     jnp.zeros((), w.dtype))


def _weight_grad_kernel(x_ref, g_ref, o_ref, *, p: _Problem, bw: int, bc: int, shift: int, fma: bool):
    """Partial sums of every tap over one column tile of one sample, all its output rows: for each kernel
    column, a loop over output rows adds each gradient row times the input row of every kernel row (one
    accumulator per kernel row; large kernels loop over kernel rows too, one accumulator)."""
    n, t = pl.program_id(0), _tile(p, 1, bw, bc, shift, rows_in_grid=False)
    channels = _channel_mask(p, t)
    column_tile = t.w0 // bw
    acc_dtype = o_ref.dtype
    inside = _output_mask(p, t, channels)

    def gradient_row(ho):
        chans = _ds(t.c0, bc)
        return _triton().load(_at(g_ref, n, ho, _ds(t.w0, bw), chans), mask=inside, other=0).astype(acc_dtype)

    def store(a, j, acc):
        total = jnp.sum(acc, axis=0)[None, :]  # (1, bc)
        target = _at(o_ref, n, column_tile, a, _ds(j, 1), _ds(t.c0, bc))
        _triton().store(target, total, mask=channels)

    def input_row(ho, a, j):
        return _load_input(x_ref, p, t, n, ho * p.sh - p.ph + a * p.dh, j, channels).astype(acc_dtype)

    for j in range(p.kw):
        if p.kh <= MAX_WEIGHT_GRAD_ROWS:
            def by_kernel_row(ho, accs, j=j):
                g = gradient_row(ho)
                return tuple(_mul_add(input_row(ho, a, j), g, acc, fma) for a, acc in enumerate(accs))

            accs = _for(p.ho, by_kernel_row, tuple(jnp.zeros((bw, bc), acc_dtype) for _ in range(p.kh)))
            for a, acc in enumerate(accs):
                store(a, j, acc)
        else:
            def one_tap(a, carry, j=j):
                acc = _for(p.ho, lambda ho, acc: _mul_add(input_row(ho, a, j), gradient_row(ho), acc, fma),
                           jnp.zeros((bw, bc), acc_dtype))
                store(a, j, acc)
                return carry

            _for(p.kh, one_tap, 0)


# --- wrappers -----------------------------------------------------------------------------------------------


def _width_phases(x, sw: int, shift: int):
    """(N, H, W, C) -> (N, H, sw, ceil(W / sw), C): column q of phase r is input column q*sw + r (a reshape at
    stride 1), moved right by `shift` columns (interpret mode only)."""
    n, h, w, c = x.shape
    columns = _cdiv(w, sw)
    if sw > 1:
        x = jnp.pad(x, [(0, 0), (0, 0), (0, columns * sw - w), (0, 0)])
        x = jnp.swapaxes(x.reshape(n, h, columns, sw, c), 2, 3)
    else:
        x = x[:, :, None]
    return jnp.pad(x, [(0, 0)] * 3 + [(shift, 0), (0, 0)]) if shift else x


def _shift(p: _Problem, interpret: bool) -> int:
    """Interpret mode clamps a load that starts before the array (Triton masks it): move the input right by the
    most columns a tap reaches to the left."""
    return max(0, -min(p.column(j)[1] for j in range(p.kw))) if interpret else 0


def _problem(x, kernel, stride, dilation, padding, out_size) -> _Problem:
    n, h, w, c = x.shape
    return _Problem(h, w, c, *kernel, *stride, *dilation, *padding, *out_size)


def depthwise_conv(x, w, *, stride=(1, 1), dilation=(1, 1), padding=(0, 0), out_size, blocks: BlockSizes,
                   interpret: bool = True, out_dtype=None):
    """y[n, ho, wo, c] = sum_ij x[n, ho*sh - ph + i*dh, wo*sw - pw + j*dw, c] * w[i, j, c] over taps inside x.

    x: (N, H, W, C); w: (KH, KW, C); padding: the low padding (ph, pw), negative to skip leading rows or
    columns; out_size: (Ho, Wo). Output (N, Ho, Wo, C) in out_dtype (default x's), accumulated in at least
    float32 and at least out_dtype. Nothing is padded or sliced: taps outside x are masked loads.
    """
    p = _problem(x, w.shape[:2], stride, dilation, padding, out_size)
    loop = not unrolled((p.kh, p.kw))
    bh = min(_pow2(blocks.block_h), _pow2(p.ho)) if loop else min(blocks.block_h, p.ho)
    bw, bc = min(blocks.block_w, _pow2(p.wo)), min(blocks.block_c, _pow2(p.c))
    shift = _shift(p, interpret)
    body, weights = ((_row_loop_kernel, _row_weights(w, bh, p.sh, p.dh)) if loop else (_unrolled_kernel, w))
    return pl.pallas_call(
        functools.partial(body, p=p, bh=bh, bw=bw, bc=bc, shift=shift, fma=blocks.fma and not interpret),
        out_shape=jax.ShapeDtypeStruct((x.shape[0], p.ho, p.wo, p.c), out_dtype or x.dtype),
        grid=(x.shape[0], _cdiv(p.ho, bh), _cdiv(p.wo, bw) * _cdiv(p.c, bc)),
        interpret=interpret,
        compiler_params=_compiler_params(blocks, interpret),
    )(_width_phases(x, p.sw, shift), weights)


def depthwise_weight_grad(x, g, kernel, *, stride=(1, 1), dilation=(1, 1), padding=(0, 0), blocks: BlockSizes,
                          interpret: bool = True):
    """dw[i, j, c] = sum_{n,ho,wo} x[n, ho*sh - ph + i*dh, wo*sw - pw + j*dw, c] * g[n, ho, wo, c] (taps outside
    x reading zeros), in at least float32: per-(sample, column tile) partial sums, then one fixed-order XLA
    reduction. g: (N, Ho, Wo, C), the gradient of depthwise_conv's output."""
    p = _problem(x, kernel, stride, dilation, padding, g.shape[1:3])
    bw, bc = min(weight_grad_block_w(blocks, p.kh), _pow2(p.wo)), min(blocks.block_c, _pow2(p.c))
    shift = _shift(p, interpret)
    column_tiles = _cdiv(p.wo, bw)
    partials = pl.pallas_call(
        functools.partial(_weight_grad_kernel, p=p, bw=bw, bc=bc, shift=shift, fma=blocks.fma and not interpret),
        out_shape=jax.ShapeDtypeStruct((x.shape[0], column_tiles, p.kh, p.kw, p.c),
                                       jnp.promote_types(x.dtype, jnp.float32)),
        grid=(x.shape[0], column_tiles * _cdiv(p.c, bc)),
        interpret=interpret,
        compiler_params=_compiler_params(blocks, interpret),
    )(_width_phases(x, p.sw, shift), g)
    return jnp.sum(partials, axis=(0, 1))  # a fixed-order XLA reduction


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


def _out_hw(spec: ConvSpec):
    return tuple(spec.out_spatial) if spec.ndim == 2 else (1, *spec.out_spatial)


def _forward(spec: ConvSpec, x, w):
    _, stride, dilation, pads = _geometry(spec)
    y = depthwise_conv(_expand(spec, _to_nhwc(spec, x)), _weights_hwc(spec, w), stride=stride, dilation=dilation,
                       padding=tuple(lo for lo, _ in pads), out_size=_out_hw(spec), blocks=_blocks(spec),
                       interpret=_interpret(spec), out_dtype=output_dtype(spec))
    return _from_nhwc(spec, y)


def _grad_input(spec: ConvSpec, w, g):
    kernel, stride, dilation, pads = _geometry(spec)
    gh = _to_nhwc(spec, g)
    if any(s > 1 for s in stride):  # the output gradient on the stride-1 output grid
        gh = jax.lax.pad(gh, jnp.zeros((), gh.dtype), [(0, 0, 0)] + [(0, 0, s - 1) for s in stride] + [(0, 0, 0)])
    in_hw = tuple(spec.lowering_in_spatial) if spec.ndim == 2 else (1, *spec.lowering_in_spatial)
    # The correlation of that gradient with the flipped kernel, its low padding the dilated kernel's reach
    # less the forward's; the input size sets the high side.
    padding = tuple(d * (k - 1) - lo for k, d, (lo, _) in zip(kernel, dilation, pads))
    flipped = _weights_hwc(spec, w)[::-1, ::-1].astype(gh.dtype)
    gx = depthwise_conv(gh, flipped, dilation=dilation, padding=padding, out_size=in_hw, blocks=_blocks(spec),
                        interpret=_interpret(spec))
    multiplier = spec.channel_multiplier
    if multiplier > 1:
        gx = gx.reshape(*gx.shape[:-1], spec.in_channels, multiplier).sum(-1)
    return _from_nhwc(spec, gx)


def _grad_weight(spec: ConvSpec, x, g):
    kernel, stride, dilation, pads = _geometry(spec)
    dw = depthwise_weight_grad(_expand(spec, _to_nhwc(spec, x)), _to_nhwc(spec, g), kernel, stride=stride,
                               dilation=dilation, padding=tuple(lo for lo, _ in pads), blocks=_blocks(spec),
                               interpret=_interpret(spec))  # (KH, KW, C_out)
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

