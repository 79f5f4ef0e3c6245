"""The Pallas depthwise kernels: interpret mode on CPU (the same kernels Triton compiles on GPU).

Parity against torch for every accepted grid and hypothesis case runs in test_parity.py (lowering="pallas");
these tests cover what is specific to the kernels: tiling, low precision, vmap, determinism, GPU lowering.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv
from jconv.lowerings.pallas import depthwise


def rand(*shape, seed=0, dtype=jnp.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def lax_depthwise_nhwc(x, w, stride, dilation, padding, out_size):
    """The kernels' contract in plain lax: a depthwise conv of NHWC x with (kH, kW, C) w, low padding `padding`
    (negative: skipped rows or columns) and the high padding that gives `out_size`."""
    pads = [(lo, (o - 1) * s + d * (k - 1) + 1 - size - lo) for size, k, s, d, lo, o in
            zip(x.shape[1:3], w.shape[:2], stride, dilation, padding, out_size)]
    return jax.lax.conv_general_dilated(x, w[:, :, None, :], stride, pads, rhs_dilation=dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
                                        precision="highest")


KERNEL_CASES = [  # kernel, stride, dilation, low padding, input (N, H, W, C)
    ((3, 2), (1, 1), (2, 3), (0, 0), (2, 13, 11, 12)),
    ((3, 3), (2, 3), (1, 1), (1, 2), (2, 13, 14, 20)),  # width phases; channels not a multiple of the tile
    ((5, 4), (3, 2), (2, 1), (-1, 3), (1, 16, 12, 7)),  # negative padding: leading rows skipped
    ((9, 9), (1, 1), (1, 2), (4, 8), (1, 12, 10, 5)),   # 81 taps: the row loop
    ((11, 9), (2, 3), (1, 1), (5, 4), (2, 15, 13, 6)),  # row loop with strides
]


@pytest.mark.parametrize("blocks", [depthwise.BlockSizes(3, 4, 4), depthwise.BlockSizes(8, 8, 32),
                                    depthwise.BlockSizes(1, 2, 8)], ids=lambda b: b.name)
@pytest.mark.parametrize("case", KERNEL_CASES, ids=lambda c: f"{c[0][0]}x{c[0][1]}-s{c[1][0]}{c[1][1]}")
def test_kernels_cover_tiles_edges_strides_and_padding(case, blocks):
    """Many row, column and channel tiles, sizes that are not powers of two, masked edges on every side: the
    forward and the weight-gradient kernels against lax."""
    kernel, stride, dilation, padding, shape = case
    x, w = rand(*shape), rand(*kernel, shape[-1], seed=1)
    out_size = tuple((size + 2 * max(lo, 0) - d * (k - 1) - 1) // s + 1
                     for size, k, s, d, lo in zip(shape[1:3], kernel, stride, dilation, padding))
    geometry = dict(stride=stride, dilation=dilation, padding=padding)
    y = depthwise.depthwise_conv(x, w, out_size=out_size, blocks=blocks, **geometry)
    ref, vjp = jax.vjp(lambda w: lax_depthwise_nhwc(x, w, stride, dilation, padding, out_size), w)
    assert y.shape == ref.shape == (shape[0], *out_size, shape[-1])
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)
    g = rand(*ref.shape, seed=2)
    dw = depthwise.depthwise_weight_grad(x, g, kernel, blocks=blocks, **geometry)
    np.testing.assert_allclose(np.asarray(dw), np.asarray(vjp(g)[0]), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", list(depthwise.BLOCK_SIZES))
def test_every_block_size_variant_fits_the_register_budget(name):
    """Accumulators and loaded tiles per thread, forward and weight gradient, for the kernels its table serves."""
    blocks = depthwise.BLOCK_SIZES[name]
    if name in depthwise.ONE_D_BLOCK_SIZES:
        kernels = [(1, k) for k in (2, 4, 31, 64, 65, 129)]
    elif name in depthwise.UNROLLED_BLOCK_SIZES:
        kernels = [(k, k) for k in range(1, 9)] + [(1, 64), (64, 1), (2, 32)]
    else:
        kernels = [(9, 9), (13, 13), (31, 31), (51, 51), (1, 65)]
    for kernel in kernels:
        forward, weight_grad = depthwise.values_per_thread(blocks, kernel)
        assert forward <= depthwise.REGISTER_BUDGET and weight_grad <= depthwise.REGISTER_BUDGET, (kernel, forward,
                                                                                                 weight_grad)
    assert all(size & (size - 1) == 0 for size in (blocks.block_w, blocks.block_c))
    if name in depthwise.ROW_LOOP_BLOCK_SIZES:
        assert blocks.block_h & (blocks.block_h - 1) == 0


@pytest.mark.parametrize("dtype,tol", [(jnp.bfloat16, 3e-2), (jnp.float16, 3e-3)])
@pytest.mark.parametrize("fn,xs,ws,kw", [
    (jconv.conv2d, (2, 6, 20, 9), (6, 1, 3, 4), dict(groups=6, padding=(1, 2), stride=(1, 2))),
    (jconv.conv2d, (1, 4, 24, 22), (4, 1, 9, 9), dict(groups=4, padding=4, dilation=(1, 2))),  # row loop
    (jconv.conv1d, (2, 8, 64), (16, 1, 4), dict(groups=8, padding=3)),  # multiplier 2
], ids=["3x4", "9x9", "conv1d"])
def test_half_precision_forward_and_gradients_against_float64(fn, xs, ws, kw, dtype, tol):
    """Output, input gradient and weight gradient against lax in float64 (which the parity suite holds to torch);
    test_transforms checks that weight gradients accumulate in float32."""
    x, w = rand(*xs, dtype=jnp.float64), rand(*ws, seed=1, dtype=jnp.float64)
    g = rand(*fn.build_spec(x, w, None, **kw).out_shape, seed=2, dtype=jnp.float64)
    ref_y, ref_vjp = jax.vjp(lambda x, w: fn(x, w, lowering="xla", **kw), x, w)
    y, vjp = jax.vjp(lambda x, w: fn(x, w, lowering="pallas", **kw), x.astype(dtype), w.astype(dtype))
    assert y.dtype == dtype
    for got, ref in zip((y, *vjp(g.astype(dtype))), (ref_y, *ref_vjp(g))):
        got = np.asarray(got, np.float64)
        assert np.abs(got - np.asarray(ref)).max() / np.abs(np.asarray(ref)).max() < tol


def test_vmap_jit_grad_compose():
    xs, w = rand(3, 2, 4, 17), rand(8, 1, 4, seed=1)  # conv1d, multiplier 2, stride 2
    f = lambda x, w: jconv.conv1d(x, w, groups=4, stride=2, padding=3, lowering="pallas")
    g = lambda x, w: jconv.conv1d(x, w, groups=4, stride=2, padding=3, lowering="xla", precision="highest")
    loss = lambda fn: jax.jit(jax.vmap(jax.grad(lambda x, w: (fn(x, w) ** 2).sum(), argnums=(0, 1)),
                                       in_axes=(0, None)))
    for a, b in zip(loss(f)(xs, w), loss(g)(xs, w)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_gradients_are_bitwise_reproducible():
    x, w = rand(2, 8, 9, 9), rand(8, 1, 3, 3, seed=1)
    step = jax.jit(jax.grad(lambda x, w: (jconv.conv2d(x, w, groups=8, padding=1, lowering="pallas") ** 2).sum(),
                            argnums=(0, 1)))
    first = step(x, w)
    for _ in range(3):
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, step(x, w)))


def test_large_kernels_loop_over_rows():
    x, w = rand(1, 2, 40, 38), rand(2, 1, 11, 9, seed=1)  # 99 taps > MAX_UNROLLED_TAPS
    y = jconv.conv2d(x, w, groups=2, padding=5, lowering="pallas")
    ref = jconv.conv2d(x, w, groups=2, padding=5, lowering="xla", precision="highest")
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-4, atol=1e-4)


def test_auto_never_picks_pallas_off_gpu():
    for platform in ("cpu", "tpu"):
        choice = jconv.explain(jconv.conv2d, jnp.zeros((1, 4, 8, 8)), jnp.zeros((4, 1, 3, 3)), groups=4,
                               platform=platform)
        assert choice.lowering != "pallas"


def test_refuses_what_it_does_not_implement():
    with pytest.raises(ValueError, match="3-D depthwise convolutions are not implemented"):
        jconv.conv3d(jnp.zeros((1, 2, 4, 4, 4)), jnp.zeros((2, 1, 3, 3, 3)), groups=2, lowering="pallas")


GPU_CASES = {  # one layer per block-size table: (function, input, weight, kwargs)
    "unrolled": (jconv.conv2d, (2, 64, 30, 30), (64, 1, 7, 7), dict(groups=64, padding=3)),
    "row loop": (jconv.conv2d, (2, 32, 30, 30), (32, 1, 11, 11), dict(groups=32, padding=5, stride=(2, 1))),
    "1-D": (jconv.conv1d, (2, 96, 300), (96, 1, 4), dict(groups=96, padding=3)),
}


@pytest.mark.gpu
@pytest.mark.parametrize("table", GPU_CASES)
def test_every_variant_runs_under_triton_on_gpu(table):
    """Only a GPU run proves the kernels compile and compute under Triton: every variant, forward and gradients,
    against lax, and bitwise-repeatable gradients."""
    fn, xs, ws, kw = GPU_CASES[table]
    x, w = rand(*xs), rand(*ws, seed=1)
    loss = lambda lowering: jax.jit(jax.value_and_grad(  # noqa: E731
        lambda x, w: (fn(x, w, lowering=lowering, precision="highest", **kw) ** 2).sum(), argnums=(0, 1)))
    ref = loss("xla")(x, w)
    variants = depthwise.variants(fn.build_spec(x, w, None, **kw))
    for variant in variants:
        step = loss(f"pallas:{variant}")
        first = step(x, w)
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-3, err_msg=variant)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(step(x, w))))


@pytest.mark.parametrize("transform", ["jvp", "jacfwd", "hessian"])
def test_forward_mode_names_the_lowering_and_the_remedy(transform):
    """The kernels sit behind a custom_vjp: forward mode raises jconv's own error (JAX's says only 'custom_vjp',
    or nothing at all under hessian), while reverse mode through the same call still works."""
    x, w = rand(1, 4, 4, 4), rand(4, 1, 3, 3, seed=1)
    f = lambda x: jconv.conv2d(x, w, padding=1, groups=4, lowering="pallas").sum()  # noqa: E731
    run = {"jvp": lambda: jax.jvp(f, (x,), (x,)), "jacfwd": lambda: jax.jacfwd(f)(x),
           "hessian": lambda: jax.hessian(f)(x)}[transform]
    with pytest.raises(ValueError, match=r"^conv2d: lowering='pallas' has reverse-mode gradients only .*"
                                         r"lowering='auto'"):
        run()
    ref = jax.grad(lambda x: jconv.conv2d(x, w, padding=1, groups=4, lowering="xla").sum())(x)
    np.testing.assert_allclose(jax.grad(f)(x), ref, rtol=1e-5, atol=1e-5)
