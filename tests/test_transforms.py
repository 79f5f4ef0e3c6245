"""jit / vmap / jvp / grad, retracing, dtypes, empty inputs, and the HLO that jconv emits."""

from __future__ import annotations

import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax import lax
from jax.test_util import check_grads

import jconv
from jconv import functional


def rand(*shape, seed=0, dtype=jnp.float64):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


class TestJitVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_conv2d_matches_torch(self):
        x, w, b = rand(2, 4, 9, 7), rand(6, 2, 3, 3, seed=1), rand(6, seed=2)
        f = self.variant(lambda x, w, b: jconv.conv2d(x, w, b, stride=2, padding=(1, 2), groups=2,
                                                      padding_mode="reflect"))
        expected = torch.nn.Conv2d(4, 6, 3, stride=2, padding=(1, 2), groups=2, padding_mode="reflect").double()
        expected.weight.data = torch.tensor(np.asarray(w))
        expected.bias.data = torch.tensor(np.asarray(b))
        np.testing.assert_allclose(f(x, w, b), expected(torch.tensor(np.asarray(x))).detach().numpy(), rtol=1e-10,
                                   atol=1e-10)

    @chex.variants(with_jit=True, without_jit=True)
    def test_conv_transpose1d_output_size_matches_torch(self):
        x, w = rand(2, 4, 7), rand(4, 3, 5, seed=1)
        f = self.variant(lambda x, w: jconv.conv_transpose1d(x, w, stride=3, padding=1, output_size=[21]))
        m = torch.nn.ConvTranspose1d(4, 3, 5, stride=3, padding=1, bias=False).double()
        m.weight.data = torch.tensor(np.asarray(w))
        ref = m(torch.tensor(np.asarray(x)), output_size=[21]).detach().numpy()
        assert ref.shape == (2, 3, 21)
        np.testing.assert_allclose(f(x, w), ref, rtol=1e-10, atol=1e-10)


def test_equal_configs_do_not_retrace():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(x, w):
        return jconv.conv2d(x, w, stride=(2, 2), padding="valid", groups=2)

    for seed in range(3):
        f(rand(1, 4, 8, 8, seed=seed), rand(4, 2, 3, 3, seed=seed))


def test_eager_calls_reuse_the_compiled_core():
    """The spec is the cache key of jconv's jitted core: equal configs written differently hit one entry."""
    x, w = rand(1, 3, 8, 8), rand(5, 3, 3, 3)
    jconv.conv2d(x, w, stride=2, padding=1)
    before = functional._compiled_apply_lowering._cache_size()
    jconv.conv2d(x + 1, w, stride=(2, 2), padding=[1, 1], dilation=(1,))
    assert functional._compiled_apply_lowering._cache_size() == before


@pytest.mark.parametrize("channels_last", [False, True])
def test_vmap_over_extra_leading_axis(channels_last):
    xs = rand(3, 2, 4, 6, 6) if not channels_last else rand(3, 2, 6, 6, 4)
    w = rand(4, 1, 3, 3, seed=1)
    f = lambda x: jconv.conv2d(x, w, padding=1, groups=4, channels_last=channels_last)
    np.testing.assert_allclose(jax.vmap(f)(xs), jnp.stack([f(x) for x in xs]), rtol=1e-12, atol=1e-12)


def test_vmap_over_weights_and_unbatched_inputs():
    x, ws = rand(3, 10), rand(5, 2, 3, 4, seed=1)  # five weight sets, unbatched conv1d input
    f = lambda w: jconv.conv1d(x, w, stride=2)
    np.testing.assert_allclose(jax.vmap(f)(ws), jnp.stack([f(w) for w in ws]), rtol=1e-12, atol=1e-12)


def test_jvp_is_the_linear_map():
    """conv is bilinear: d/dx (x*w)[t] = t*w and d/dw (x*w)[t] = x*t, exactly."""
    x, w, b = rand(2, 4, 7, 7), rand(4, 2, 3, 3, seed=1), rand(4, seed=2)
    tx, tw, tb = rand(2, 4, 7, 7, seed=3), rand(4, 2, 3, 3, seed=4), rand(4, seed=5)
    kw = dict(stride=2, padding=1, dilation=1, groups=2)
    f = lambda x, w, b: jconv.conv2d(x, w, b, **kw)
    y, ty = jax.jvp(f, (x, w, b), (tx, tw, tb))
    expected = jconv.conv2d(tx, w, **kw) + jconv.conv2d(x, tw, **kw) + tb[None, :, None, None]
    np.testing.assert_allclose(ty, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lowering,fn,xs,ws,kw", [
    ("taps", jconv.conv2d, (2, 4, 9, 9), (4, 1, 3, 3), dict(groups=4, padding=1)),
    ("im2col", jconv.conv2d, (2, 4, 9, 9), (6, 4, 3, 3), dict(padding=1)),
    ("matmul", jconv.conv2d, (2, 4, 9, 9), (6, 4, 1, 1), dict()),
    ("phase", jconv.conv_transpose2d, (2, 4, 5, 5), (4, 6, 4, 4), dict(stride=2, padding=1)),
    ("planes", jconv.conv3d, (2, 4, 5, 6, 5), (6, 4, 3, 3, 3), dict(padding=1)),
])
def test_complex_jvp_of_hand_written_rules_is_the_linear_map(lowering, fn, xs, ws, kw):
    """Forward mode on complex arrays through the lowerings with custom derivative rules (reverse mode is in
    test_parity's complex hypothesis test): the tangent of a bilinear map, as lax's own conv computes it."""
    c = lambda shape, seed: rand(*shape, seed=seed) + 1j * rand(*shape, seed=seed + 10)
    x, w, tx, tw = c(xs, 0), c(ws, 1), c(xs, 2), c(ws, 3)
    y, ty = jax.jvp(lambda x, w: fn(x, w, lowering=lowering, **kw), (x, w), (tx, tw))
    np.testing.assert_allclose(y, fn(x, w, lowering="xla", **kw), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ty, fn(tx, w, lowering="xla", **kw) + fn(x, tw, lowering="xla", **kw),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fn,xs,ws,kw", [
    (jconv.conv1d, (1, 2, 9), (4, 1, 3), dict(groups=2, stride=2, dilation=2, padding_mode="circular", padding=2)),
    (jconv.conv2d, (1, 2, 6, 5), (2, 2, 2, 3), dict(padding="same", padding_mode="replicate")),
    (jconv.conv_transpose2d, (1, 2, 4, 3), (2, 3, 3, 2), dict(stride=2, output_padding=1, padding=1)),
])
def test_check_grads_second_order(fn, xs, ws, kw):
    check_grads(lambda x, w: fn(x, w, **kw), (rand(*xs), rand(*ws, seed=1)), order=2, modes=("fwd", "rev"))


def test_im2col_second_order_in_many_chunks():
    """im2col's weight tangent is a loop of rematerialized chunk matmuls that reverse mode transposes; forward
    mode, reverse mode and their compositions agree with finite differences, over several chunks."""
    f = lambda x, w: jconv.conv2d(x, w, padding=(2, 1), dilation=(2, 1), channels_last=True,
                                  lowering="im2col:chunk-256B")
    check_grads(f, (rand(2, 6, 5, 3), rand(4, 3, 3, 2, seed=1)), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2), (jnp.float16, 2e-3)])
@pytest.mark.parametrize("transposed", [False, True])
def test_low_precision_dtypes_against_float64_torch(dtype, rtol, transposed):
    x, w, b = rand(2, 4, 8, 8), rand(4, 2, 3, 3, seed=1), rand(4, seed=2)
    if transposed:
        ref = F.conv_transpose2d(*(torch.tensor(np.asarray(a)) for a in (x, w, b)), stride=2, groups=2).numpy()
        y = jconv.conv_transpose2d(x.astype(dtype), w.astype(dtype), b.astype(dtype), stride=2, groups=2)
    else:
        ref = F.conv2d(*(torch.tensor(np.asarray(a)) for a in (x, w, b)), padding=1, groups=2).numpy()
        y = jconv.conv2d(x.astype(dtype), w.astype(dtype), b.astype(dtype), padding=1, groups=2)
    assert y.dtype == dtype
    # Error relative to the output's scale: inputs are rounded to `dtype` before the conv too.
    err = np.abs(np.asarray(y, np.float64) - ref).max() / np.abs(ref).max()
    assert err < 4 * rtol, err


@pytest.mark.parametrize("dtype,rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2), (jnp.float16, 2e-3)])
@pytest.mark.parametrize("n,xs,ws,kw", [
    (1, (2, 4, 16), (4, 4, 8), dict(stride=4, output_padding=1)),
    (2, (2, 4, 8, 8), (4, 3, 4, 4), dict(stride=2, padding=1)),
    (2, (2, 8, 8, 4), (4, 3, 4, 4), dict(stride=2, padding=1, channels_last=True)),
    (3, (1, 4, 4, 4, 4), (4, 2, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
])
def test_low_precision_ungrouped_transposed_forward_and_gradients(dtype, rtol, n, xs, ws, kw):
    """Ungrouped transposed convs run on matmuls (phase's forward and gradients), whose half-precision operands
    XLA:CPU does not multiply into float32 in every layout (a BF16 x BF16 = F32 dot failed to run)."""
    x, w = rand(*xs), rand(*ws, seed=1)
    fn, ref_fn = getattr(jconv, f"conv_transpose{n}d"), getattr(F, f"conv_transpose{n}d")
    cl = kw.get("channels_last", False)
    options = {k: v for k, v in kw.items() if k != "channels_last"}
    g = rand(*jax.eval_shape(lambda x, w: fn(x, w, **kw), x, w).shape, seed=2)
    y, vjp = jax.vjp(lambda x, w: fn(x, w, **kw), x.astype(dtype), w.astype(dtype))
    got = (y, *vjp(g.astype(dtype)))
    assert all(a.dtype == dtype for a in got)
    to_torch = lambda a, move: torch.tensor(np.moveaxis(np.asarray(a), -1, 1) if move else np.asarray(a),
                                            requires_grad=True)
    xt, wt = to_torch(x, cl), to_torch(w, False)
    yt = ref_fn(xt, wt, **options)
    yt.backward(to_torch(g, cl))
    back = lambda a: np.moveaxis(a, 1, -1) if cl else a
    for a, b in zip(got, (back(yt.detach().numpy()), back(xt.grad.numpy()), wt.grad.numpy())):
        # Error relative to the result's scale: inputs are rounded to `dtype` before the conv too.
        err = np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max()
        assert err < 4 * rtol, err


@pytest.mark.parametrize("dtype,rtol", [(jnp.bfloat16, 1e-2), (jnp.float16, 1e-3)])
def test_half_precision_bias_gradient_accumulates_in_float32(dtype, rtol):
    """The bias gradient sums the output gradient over the batch and every position (18k terms here); summed in
    float16 it was 3% off, in bfloat16 worse. PyTorch accumulates in float32, and so does jconv."""
    x, w, b, g = rand(8, 4, 48, 48), rand(4, 4, 3, 3, seed=1), rand(4, seed=2), rand(8, 4, 48, 48, seed=3)
    gb = jax.vjp(lambda b: jconv.conv2d(x.astype(dtype), w.astype(dtype), b, padding=1), b.astype(dtype)
                 )[1](g.astype(dtype))[0]
    expected = np.asarray(g.astype(dtype), np.float64).sum(axis=(0, 2, 3))  # exact sums of the rounded gradient
    np.testing.assert_allclose(np.asarray(gb, np.float64), expected, rtol=rtol)


def test_preferred_element_type_gives_float32_output_from_bf16():
    x, w, b = (a.astype(jnp.bfloat16) for a in (rand(1, 2, 6, 6), rand(3, 2, 3, 3, seed=1), rand(3, seed=2)))
    y = jconv.conv2d(x, w, b, preferred_element_type=jnp.float32)
    assert y.dtype == jnp.float32
    ref = F.conv2d(*(torch.tensor(np.asarray(a, np.float64)) for a in (x, w, b))).numpy()
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)  # exact products of bf16 inputs


def test_precision_passes_through_to_lax():
    x, w = rand(1, 2, 6, 6, dtype=jnp.float32), rand(3, 2, 3, 3, seed=1, dtype=jnp.float32)
    text = jax.jit(lambda x, w: jconv.conv2d(x, w, precision="highest")).lower(x, w).as_text()
    assert "HIGHEST" in text


@pytest.mark.parametrize("fn,xs,ws,expected", [
    (jconv.conv2d, (0, 4, 5, 5), (6, 2, 3, 3), (0, 6, 3, 3)),
    (jconv.conv2d, (1, 0, 5, 5), (6, 0, 3, 3), (1, 0, 3, 3)),  # torch returns zero channels here too
    (jconv.conv_transpose2d, (0, 4, 5, 5), (4, 3, 3, 3), (0, 3, 7, 7)),
])
def test_empty_inputs_give_empty_outputs_like_torch(fn, xs, ws, expected):
    groups = 2 if ws == (6, 2, 3, 3) else 1
    torch_fn = F.conv2d if fn is jconv.conv2d else F.conv_transpose2d
    assert torch_fn(torch.zeros(xs), torch.zeros(ws), groups=groups).shape == expected
    y = fn(jnp.zeros(xs), jnp.zeros(ws), groups=groups)
    assert y.shape == expected
    g = jax.grad(lambda w: fn(jnp.ones(xs), w, groups=groups).sum())(jnp.ones(ws))
    assert g.shape == ws and not np.any(np.asarray(g))


def _conv_instructions(hlo: str):
    # Operand names and source metadata differ between the two programs; the convolution itself must not.
    return [re.sub(r"%\S+|, metadata=\{.*\}", "", line.split("=", 1)[1]).strip()
            for line in hlo.splitlines() if " convolution(" in line]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("groups,lowering", [(2, "xla"), (1, "auto")])
def test_zero_padding_folds_into_the_hlo_convolution(channels_last, groups, lowering):
    """jit(jconv.conv2d) compiles to the same convolution as the hand-written lax call, with no pad op
    (for a dense conv, auto picks xla on every platform)."""
    x = jax.ShapeDtypeStruct((2, 9, 9, 8) if channels_last else (2, 8, 9, 9), jnp.float32)
    w = jax.ShapeDtypeStruct((16, 8 // groups, 3, 3), jnp.float32)
    dn = ("NHWC", "OIHW", "NHWC") if channels_last else ("NCHW", "OIHW", "NCHW")
    ours = jax.jit(lambda x, w: jconv.conv2d(x, w, stride=2, padding=(1, 2), dilation=(2, 1), groups=groups,
                                             channels_last=channels_last, lowering=lowering)
                   ).lower(x, w).compile().as_text()
    theirs = jax.jit(lambda x, w: lax.conv_general_dilated(
        x, w, (2, 2), ((1, 1), (2, 2)), rhs_dilation=(2, 1), dimension_numbers=dn, feature_group_count=groups,
    )).lower(x, w).compile().as_text()
    assert _conv_instructions(ours) == _conv_instructions(theirs)
    assert len(_conv_instructions(ours)) == 1
    assert " pad(" not in ours


def test_padding_that_lengthens_the_output_is_applied_beforehand_for_the_weight_gradient_on_cpu():
    """XLA:CPU's weight gradient is 10-30x slower when zero padding that makes the output longer than the input is
    folded into the conv (jconv/lowerings/xla.py): on CPU the weight gradient pads that axis's excess first (the
    other axis stays folded), while the forward remains lax's own conv. Values, gradients and jvp equal lax's."""
    x, w = rand(2, 3, 9, 8), rand(4, 3, 3, 3, seed=1)
    f = lambda x, w: jconv.conv2d(x, w, padding=(3, 1), lowering="xla")  # H: 9 -> 13; W: 8 -> 8
    ref = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), ((3, 3), (1, 1)))
    forward = str(jax.make_jaxpr(f)(x, w))
    assert "pad[" not in forward and "padding=((3, 3), (1, 1))" in forward, forward
    weight_grad = str(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(f(x, w))))(w))
    if jax.default_backend() == "cpu":
        # The excess (13 - 9 = 4 rows) is padded first, evenly; the 'same'-sized rest stays folded.
        assert "padding_config=((0, 0, 0), (0, 0, 0), (2, 2, 0), (0, 0, 0))" in weight_grad, weight_grad
        assert "padding=((1, 1), (1, 1))" in weight_grad, weight_grad
    else:
        assert "pad[" not in weight_grad, weight_grad
    loss = lambda conv: lambda x, w: jnp.sum(jnp.sin(conv(x, w)))
    y, grads = jax.value_and_grad(loss(f), argnums=(0, 1))(x, w)
    y_ref, grads_ref = jax.value_and_grad(loss(ref), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    for g, g_ref in zip(grads, grads_ref):
        np.testing.assert_allclose(g, g_ref, rtol=1e-12, atol=1e-12)
    tangents = (rand(*x.shape, seed=2), rand(*w.shape, seed=3))
    for t in (tangents, (jnp.zeros_like(x), tangents[1]), (tangents[0], jnp.zeros_like(w))):
        np.testing.assert_allclose(jax.jvp(f, (x, w), t)[1], jax.jvp(ref, (x, w), t)[1], rtol=1e-12, atol=1e-12)
    check_grads(f, (x, w), order=2, modes=("fwd", "rev"))


def test_materialized_is_the_identity_under_every_transform():
    """common.materialized writes a's rows into a fresh buffer: the same values bit for bit (NaN, infinities and
    -0.0 included), and jvp, grad and vmap pass through it."""
    from jconv.lowerings.common import materialized
    a = jnp.array([[np.nan, -0.0, np.inf], [-np.inf, 1.5, -2.25]], jnp.float32)
    out = jax.jit(materialized)(a)
    assert out.dtype == a.dtype and np.array_equal(np.asarray(out).view(np.uint32), np.asarray(a).view(np.uint32))
    b = rand(4, 3)
    np.testing.assert_array_equal(jax.vmap(materialized)(b[:, :, None]), b[:, :, None])
    check_grads(lambda b: materialized(b) * b, (b,), order=2, modes=("fwd", "rev"))


@pytest.mark.parametrize("fn,xs,ws", [
    (jconv.conv2d, (2, 9, 9, 16), (16, 1, 7, 7)),
    (jconv.conv1d, (2, 40, 8), (16, 1, 4)),  # channel multiplier 2
])
def test_channels_last_taps_read_their_weights_from_a_taps_major_buffer(fn, xs, ws):
    """Channels-last, the tap sum's loop reads each tap's channel weights along the innermost axis; XLA:CPU would
    fuse the transpose of w (out_channels, taps) into that loop and gather them with a stride (ConvNeXt 7x7
    forward 3.6x slower). taps._weights_by_tap writes them taps-major first: the compiled forward holds a
    (taps, out_channels) buffer that the loop reads."""
    if jax.default_backend() != "cpu":
        pytest.skip("checks XLA:CPU's fusion of the tap loop")
    x, w = jax.ShapeDtypeStruct(xs, jnp.float32), jax.ShapeDtypeStruct(ws, jnp.float32)
    text = jax.jit(lambda x, w: fn(x, w, groups=xs[-1], channels_last=True, lowering="taps")
                   ).lower(x, w).compile().as_text()
    entry = text[text.index("ENTRY"):]
    types = dict(re.findall(r"(%[\w.-]+) = (\S+)", entry))
    loop_operands = re.search(r"ROOT \S+ = \S+ fusion\(([^)]*)\)", entry).group(1).split(", ")
    taps, channels = math.prod(ws[2:]), ws[0]
    taps_major = {f"f32[{taps},{channels}]{{1,0}}", f"f32[{channels},{taps}]{{0,1}}"}  # either view of it
    assert any(types.get(o) in taps_major for o in loop_operands), entry


@pytest.mark.parametrize("fn,xs,ws,kw", [
    (jconv.conv1d, (8, 32, 1024), (64, 1, 16), dict(padding=7, groups=32)),
    (jconv.conv2d, (4, 16, 28, 28), (48, 1, 3, 3), dict(padding=1, stride=2, groups=16)),
])
def test_depthwise_multiplier_input_gradient_keeps_no_copy_per_tap(fn, xs, ws, kw):
    """taps' input gradient with a channel multiplier m sums m depthwise tap sums over channel-strided slices of
    the output gradient. Written as one tap sum and a reduction over the multiplier axis, XLA:CPU materialized
    every tap's slice of the padded gradient (here 32x and 30x the input's size in scratch; 8x128x1024 k16 m=2:
    56 ms against 1.6). The scratch stays under two input-sized copies per slice, and the values match lax's in
    float64."""
    x, w = rand(*xs, dtype=jnp.float32), rand(*ws, seed=1, dtype=jnp.float32)
    conv = lambda x: fn(x, w, lowering="taps", **kw)
    g = rand(*jax.eval_shape(conv, x).shape, seed=2, dtype=jnp.float32)
    grad_input = jax.jit(lambda x, g: jax.vjp(conv, x)[1](g)[0])
    scratch = grad_input.lower(x, g).compile().memory_analysis().temp_size_in_bytes
    multiplier = ws[0] // xs[1]
    assert scratch < 2 * multiplier * x.nbytes, (scratch, x.nbytes)
    expected = jax.vjp(lambda x: fn(x, w.astype(jnp.float64), lowering="xla", **kw), x.astype(jnp.float64)
                       )[1](g.astype(jnp.float64))[0]
    np.testing.assert_allclose(grad_input(x, g), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fn,xs,ws,kw", [
    (jconv.conv_transpose1d, (2, 32, 512), (32, 16, 8), dict(stride=4, padding=2)),
    (jconv.conv_transpose2d, (2, 16, 14, 14), (16, 8, 4, 4), dict(stride=2, padding=1)),
    (jconv.conv_transpose2d, (2, 16, 14, 14), (16, 8, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    (jconv.conv_transpose3d, (1, 8, 8, 8, 8), (8, 4, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
])
def test_phase_gradients_build_the_output_gradient_columns_once(fn, xs, ws, kw):
    """phase's gradients are two matmuls over G, the output gradient's strided slices for every tap. G used to be
    sliced from a padded copy of g, and with more than 8 taps XLA:CPU computed each slice into its own buffer and
    then copied them into G: 1.75-2.1x G's size in scratch here, which pushed HiFi-GAN's forward+backward over
    glibc's 32 MB mmap threshold (35 -> 24 ms once under it). Each slice is now padded on its own and the taps
    stacked in nests of at most 8, so the scratch stays under 1.5x G, and the values match lax's in float64."""
    x, w = rand(*xs, dtype=jnp.float32), rand(*ws, seed=1, dtype=jnp.float32)
    conv = lambda x, w: fn(x, w, lowering="phase", **kw)
    g = rand(*jax.eval_shape(conv, x, w).shape, seed=2, dtype=jnp.float32)
    gradients = jax.jit(lambda x, w, g: jax.vjp(conv, x, w)[1](g))
    scratch = gradients.lower(x, w, g).compile().memory_analysis().temp_size_in_bytes
    columns_bytes = math.prod(ws[1:]) * x.size // xs[1] * 4  # taps x C_out by N x input positions, float32
    assert scratch < 1.5 * columns_bytes, (scratch, columns_bytes)
    expected = jax.vjp(lambda x, w: fn(x, w, lowering="xla", **kw), x.astype(jnp.float64), w.astype(jnp.float64)
                       )[1](g.astype(jnp.float64))
    for got, want in zip(gradients(x, w, g), expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fn,xs,ws,kw", [
    (jconv.conv_transpose1d, (2, 32, 512), (32, 16, 8), dict(stride=4, padding=2)),
    (jconv.conv_transpose2d, (2, 16, 14, 14), (16, 8, 4, 4), dict(stride=2, padding=1)),
    (jconv.conv_transpose2d, (2, 14, 14, 16), (16, 8, 4, 4), dict(stride=2, padding=1, channels_last=True)),
    (jconv.conv_transpose3d, (1, 8, 8, 8, 8), (8, 4, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
])
def test_phase_matmul_forward_is_dots_and_one_loop(fn, xs, ws, kw):
    """phase's matmul forward compiles to dots and fused loops, no convolution, and its scratch holds the
    products once: the shifted sums and the interleave are one loop that writes the output."""
    from jconv.lowerings import phase
    x, w = rand(*xs, dtype=jnp.float32), rand(*ws, seed=1, dtype=jnp.float32)
    assert phase.matmul_forward(fn.build_spec(x, w, None, **kw))
    compiled = jax.jit(lambda x, w: fn(x, w, lowering="phase", **kw)).lower(x, w).compile()
    assert "convolution(" not in compiled.as_text()
    products_bytes = math.prod(ws[1:]) * x.size // ws[0] * 4  # taps x C_out by N x input positions, float32
    scratch = compiled.memory_analysis().temp_size_in_bytes
    assert scratch <= 1.05 * products_bytes + x.size * 4, (scratch, products_bytes)
    expected = fn(x.astype(jnp.float64), w.astype(jnp.float64), lowering="xla", **kw)
    np.testing.assert_allclose(compiled(x, w), expected, rtol=1e-4, atol=1e-4)


def test_phase_tap_nesting_covers_every_tap_in_order():
    """The nests factor the tap count into levels of at most MAX_FUSED_CONCAT (a larger level only where no
    divisor fits) and stack the columns in the same order as one flat stack."""
    from jconv.lowerings import phase
    limit = phase.MAX_FUSED_CONCAT
    for taps in range(1, 350):
        levels = phase._tap_levels(taps)
        assert math.prod(levels) == taps, (taps, levels)
        for level in levels:
            assert level <= limit or not any(level % f == 0 for f in range(2, limit + 1)), (taps, levels)
    for taps in (1, 8, 9, 16, 27, 22):
        columns = [jnp.full((2, 3), float(t)) + jnp.arange(3.0) for t in range(taps)]
        np.testing.assert_array_equal(
            phase._stack_taps(columns, phase._tap_levels(taps)).reshape(taps, 2, 3), jnp.stack(columns))


def test_non_zero_padding_modes_use_no_gather():
    """Gathers have scatter-add gradients, non-deterministic on GPU; the pads are slices and concatenations."""
    x, w = rand(1, 2, 6, 6), rand(2, 2, 3, 3, seed=1)
    for mode in ("reflect", "replicate", "circular"):
        jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: jconv.conv2d(x, w, padding=2, padding_mode=mode).sum()))(x))
        assert "gather" not in jaxpr and "scatter" not in jaxpr, mode


def test_circular_padding_commutes_with_roll():
    x, w = rand(1, 2, 8, 8), rand(3, 2, 3, 3, seed=1)
    f = lambda x: jconv.conv2d(x, w, padding=1, padding_mode="circular")
    np.testing.assert_allclose(f(jnp.roll(x, (2, -3), (2, 3))), jnp.roll(f(x), (2, -3), (2, 3)), rtol=1e-12,
                               atol=1e-12)


def test_explain_names_the_lowering():
    choice = jconv.explain(jconv.conv2d, jax.ShapeDtypeStruct((8, 64, 56, 56), jnp.float32),
                           jax.ShapeDtypeStruct((64, 1, 3, 3), jnp.float32), padding=1, groups=64)
    assert choice.lowering in jconv.LOWERING_NAMES
    assert "conv2d" in str(choice) and "g=64" in str(choice)
    forced = jconv.explain(jconv.conv2d, jnp.zeros((1, 2, 5, 5)), jnp.zeros((2, 2, 3, 3)), lowering="xla")
    assert forced.lowering == "xla" and "explicitly" in forced.reason


def test_float32_grid_against_torch():
    from parity import jconv_forward_and_grads
    from references import Case, torch_forward_and_grads

    for case in [Case(n=2, transposed=False, batch=2, in_channels=4, out_channels=4, spatial=(9, 9), kernel=(3, 3),
                      groups=4, padding=1),
                 Case(n=1, transposed=True, batch=2, in_channels=3, out_channels=2, spatial=(7,), kernel=(4,),
                      stride=(2,), padding=1)]:
        x, w, b = case.arrays()
        cot = np.ones(torch_forward_and_grads(case, x, w, b, np.zeros(1))[0].shape)
        expected = torch_forward_and_grads(case, x, w, b, cot)
        got = jconv_forward_and_grads(case, "auto", x, w, b, cot, dtype=jnp.float32)
        for e, g in zip(expected, got):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


# Per lowering, calls it accepts (function, input shape, weight shape, kwargs); matmul's two channels-first forms
# (per sample for many positions, one matmul for few positions and many channels) each once.
WIDENING_CASES = [
    (jconv.conv2d, (2, 6, 9, 8), (4, 6, 3, 3), dict(padding=1)),
    (jconv.conv2d, (2, 6, 9, 8), (12, 1, 3, 3), dict(padding=1, groups=6)),
    (jconv.conv2d, (2, 6, 9, 8), (4, 3, 3, 3), dict(padding=1, groups=2, dilation=2)),
    (jconv.conv2d, (2, 6, 50, 40), (4, 6, 1, 1), {}),
    (jconv.conv2d, (16, 128, 8, 8), (128, 128, 1, 1), {}),
    (jconv.conv3d, (1, 4, 5, 6, 7), (4, 4, 3, 3, 3), dict(padding=1)),
    (jconv.conv_transpose2d, (2, 6, 5, 4), (6, 4, 4, 4), dict(stride=2, padding=1)),
]


def bfloat16_calls(cases, lowering):
    """(fn, kwargs, spec, x, w) for each case `lowering` accepts, with random bfloat16 operands; at least one."""
    calls = []
    for fn, xs, ws, kw in cases:
        spec = fn.build_spec(jax.ShapeDtypeStruct(xs, jnp.bfloat16), jax.ShapeDtypeStruct(ws, jnp.bfloat16),
                             lowering=lowering, **kw)
        if lowering != "auto" and jconv.dispatch.LOWERINGS[lowering].refusal(spec) is not None:
            continue
        rng = np.random.default_rng(0)
        x, w = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in (xs, ws))
        calls.append((fn, kw, spec, x, w))
    assert calls, f"{lowering} accepts none of the cases"
    return calls


@pytest.mark.parametrize("lowering", ("auto",) + jconv.LOWERING_NAMES)
def test_a_wider_preferred_element_type_accumulates_in_it(lowering):
    """bfloat16 operands, preferred_element_type=float32: products of bfloat16 values are exact in float32, so the
    float32 sums match float64's to float32 rounding; a lowering that dropped the argument would round the output
    to bfloat16 (about 3 decimal digits)."""
    for fn, kw, _, x, w in bfloat16_calls(WIDENING_CASES, lowering):
        y = fn(x, w, lowering=lowering, preferred_element_type=jnp.float32, **kw)
        ref = fn(x.astype(jnp.float64), w.astype(jnp.float64), lowering="xla", **kw)
        assert y.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=2e-5, atol=2e-5)


# Weight gradients reduce over the batch and every output position: (function, input shape, weight shape, kwargs)
# with thousands of products per weight, one per kind of weight-gradient code (taps' summed and banded forms,
# grouped, dense, pointwise, transposed, dilated, 3-D).
HALF_GRADIENT_CASES = [
    (jconv.conv2d, (16, 4, 16, 16), (4, 1, 3, 3), dict(padding=1, groups=4)),
    (jconv.conv2d, (16, 2, 5, 40), (2, 1, 3, 29), dict(padding=(1, 14), groups=2)),
    (jconv.conv2d, (16, 4, 16, 16), (4, 2, 3, 3), dict(padding=1, groups=2)),
    (jconv.conv2d, (16, 4, 16, 16), (4, 4, 3, 3), dict(padding=1)),
    (jconv.conv2d, (16, 4, 16, 16), (6, 4, 1, 1), {}),
    (jconv.conv_transpose2d, (16, 4, 8, 8), (4, 2, 4, 4), dict(stride=2, padding=1)),
    (jconv.conv2d, (16, 4, 16, 16), (4, 4, 3, 3), dict(padding=2, dilation=2)),
    (jconv.conv3d, (8, 4, 8, 8, 8), (4, 4, 3, 3, 3), dict(padding=1)),
]


@pytest.mark.parametrize("lowering", ("auto",) + jconv.LOWERING_NAMES)
def test_bfloat16_weight_gradients_accumulate_in_float32(lowering):
    """bfloat16 operands: the weight gradient is within bfloat16's rounding of float64's (as torch's, which
    accumulates in float32); summed in bfloat16 over thousands of products it was several times further off."""
    for fn, kw, spec, x, w in bfloat16_calls(HALF_GRADIENT_CASES, lowering):
        g = jnp.asarray(np.random.default_rng(1).standard_normal(spec.out_shape), jnp.bfloat16)

        def weight_grad(x, w, lowering):
            return jax.grad(lambda w: jnp.sum(fn(x, w, lowering=lowering, **kw).astype(jnp.float64) * g))(w)

        got = np.asarray(weight_grad(x, w, lowering), np.float64)
        ref = np.asarray(weight_grad(x.astype(jnp.float64), w.astype(jnp.float64), "xla"))
        error = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert error < 4e-3, (fn.__name__, x.shape, w.shape, kw, error)  # bfloat16's unit roundoff is 3.9e-3
