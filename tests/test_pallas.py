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


def lax_depthwise_nhwc(x, w, dilation):
    """The kernels' contract in plain lax: a stride-1, unpadded depthwise conv of NHWC x with (kH, kW, C) w."""
    return jax.lax.conv_general_dilated(x, w[:, :, None, :], (1, 1), "VALID", rhs_dilation=dilation,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
                                        precision="highest")


@pytest.mark.parametrize("blocks", [depthwise.BlockSizes(2, 4), depthwise.BlockSizes(8, 32)])
def test_kernel_tiles_cover_odd_sizes(blocks):
    """Many row and channel tiles, sizes that are not powers of two, dilation: against a plain XLA conv."""
    x = rand(2, 13, 11, 12)  # NHWC, already padded
    w = rand(3, 2, 12, seed=1)
    y = depthwise.depthwise_stride1(x, w, (2, 3), blocks)
    ref = lax_depthwise_nhwc(x, w, (2, 3))
    assert y.shape == ref.shape == (2, 9, 8, 12)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_weight_grad_kernel_matches_autodiff_of_lax():
    x, g = rand(3, 10, 9, 5), rand(3, 8, 5, 5, seed=2)
    dw = depthwise.depthwise_weight_grad(x, g, (3, 3), (1, 2), depthwise.BlockSizes(2, 4))
    ref = jax.vjp(lambda w: lax_depthwise_nhwc(x, w, (1, 2)), jnp.zeros((3, 3, 5), jnp.float32))[1](g)[0]
    np.testing.assert_allclose(np.asarray(dw), np.asarray(ref), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype,tol", [(jnp.bfloat16, 3e-2), (jnp.float16, 3e-3)])
def test_half_precision_accumulates_in_float32(dtype, tol):
    x, w = rand(2, 6, 20, 9), rand(6, 1, 3, 4, seed=1)  # multiplier 1, channels-first
    kw = dict(groups=6, padding=(1, 2), stride=(1, 2))
    ref = jconv.conv2d(x, w, lowering="xla", precision="highest", **kw)
    y = jconv.conv2d(x.astype(dtype), w.astype(dtype), lowering="pallas", **kw)
    assert y.dtype == dtype
    assert float(jnp.max(jnp.abs(y.astype(jnp.float32) - ref)) / jnp.max(jnp.abs(ref))) < tol


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


@pytest.mark.gpu
def test_triton_lowering_on_gpu():
    """Only a GPU run proves the kernels lower under Triton (power-of-2 shapes, no interpret)."""
    x, w = rand(2, 64, 30, 30), rand(64, 1, 7, 7, seed=1)
    y = jconv.conv2d(x, w, groups=64, padding=3, lowering="pallas")
    ref = jconv.conv2d(x, w, groups=64, padding=3, lowering="xla", precision="highest")
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-4, atol=1e-4)


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
