"""The README's comparison table, cell by cell, against the installed lax and Flax (and jconv's own column)."""

from __future__ import annotations

import dataclasses
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen

import jconv

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.standard_normal((2, 3, 9, 8)), jnp.float32)  # (N, C, H, W)


def _flax_conv(padding, kernel=(3, 3), dilation=(1, 1), strides=(1, 1)):
    module = linen.Conv(4, kernel, strides=strides, padding=padding, kernel_dilation=dilation, use_bias=False)
    x = jnp.moveaxis(X, 1, -1)
    params = module.init(jax.random.key(0), x)
    kernel_hwio = params["params"]["kernel"]
    y = jnp.moveaxis(module.apply(params, x), -1, 1)
    return y, jnp.transpose(kernel_hwio, (3, 2, 0, 1))  # the same kernel in PyTorch's (O, I, kH, kW)


def test_argument_names_and_layouts():
    lax_args = inspect.signature(jax.lax.conv_general_dilated).parameters
    assert {"window_strides", "rhs_dilation", "dimension_numbers"} <= set(lax_args)
    assert not {"stride", "dilation", "groups"} & set(lax_args)
    _, kernel = _flax_conv("SAME")
    module = linen.Conv(4, (3, 2), use_bias=False)
    hwio = module.init(jax.random.key(0), jnp.zeros((1, 9, 8, 3)))["params"]["kernel"]
    assert hwio.shape == (3, 2, 3, 4)  # HWIO, channels-last input
    assert list(inspect.signature(jconv.conv2d).parameters)[:7] == [
        "input", "weight", "bias", "stride", "padding", "dilation", "groups"]


@pytest.mark.parametrize("kernel,dilation", [((3, 3), (1, 1)), ((4, 2), (1, 1)), ((2, 3), (2, 3))])
def test_same_padding_matches_torch_split_at_stride_1(kernel, dilation):
    w = jnp.asarray(RNG.standard_normal((4, 3, *kernel)), jnp.float32)
    ours = jconv.conv2d(X, w, padding="same", dilation=dilation)
    lax_same = jax.lax.conv_general_dilated(X, w, (1, 1), "SAME", rhs_dilation=dilation)
    np.testing.assert_allclose(lax_same, ours, rtol=1e-5, atol=1e-5)
    y_flax, w_flax = _flax_conv("SAME", kernel, dilation)
    np.testing.assert_allclose(y_flax, jconv.conv2d(X, w_flax, padding="same", dilation=dilation), rtol=1e-5,
                               atol=1e-5)


def test_same_padding_strided():
    w = jnp.ones((4, 3, 3, 3), jnp.float32)
    assert jax.lax.conv_general_dilated(X, w, (2, 2), "SAME").shape == (2, 4, 5, 4)  # lax allows it
    with pytest.raises(ValueError, match="padding='same' is not supported for strided convolutions"):
        jconv.conv2d(X, w, stride=2, padding="same")  # torch's rule


def test_padding_modes():
    for mode in ("REFLECT", "CIRCULAR"):
        assert _flax_conv(mode)[0].shape == (2, 4, 9, 8)
    with pytest.raises(Exception):
        _flax_conv("REPLICATE")
    with pytest.raises(Exception):
        _flax_conv("EDGE")
    w = jnp.ones((4, 3, 3, 3), jnp.float32)
    for mode in ("reflect", "replicate", "circular"):  # any amounts, per side as in torch
        assert jconv.conv2d(X, w, padding=(2, 1), padding_mode=mode).shape == (2, 4, 11, 8)


def test_transposed_conv_features():
    assert "feature_group_count" not in inspect.signature(jax.lax.conv_transpose).parameters
    fields = {f.name for f in dataclasses.fields(linen.ConvTranspose)}
    assert not {"feature_group_count", "output_padding", "groups"} & fields
    y = jconv.conv_transpose2d(X[:, :2], jnp.ones((2, 3, 3, 3), jnp.float32), stride=2, groups=2, output_padding=1)
    assert y.shape == (2, 6, 20, 18)
    assert jconv.conv_transpose2d(X[:, :2], jnp.ones((2, 3, 3, 3), jnp.float32), stride=2, output_size=(19, 18)).shape == \
        (2, 3, 19, 18)


def test_unbatched_input():
    w = jnp.ones((4, 3, 3, 3), jnp.float32)
    with pytest.raises(Exception):
        jax.lax.conv_general_dilated(X[0], w, (1, 1), "VALID")
    module = linen.Conv(4, (3, 3), use_bias=False)
    x = jnp.moveaxis(X[0], 0, -1)  # (H, W, C)
    assert module.apply(module.init(jax.random.key(0), x), x).shape == (9, 8, 4)
    assert jconv.conv2d(X[0], w).shape == (4, 7, 6)


def test_bad_arguments_get_torch_checks():
    with pytest.raises(ValueError, match=r"^conv2d: Given groups=1, weight of size \[6, 2, 3, 3\], expected "
                                         r"input\[2, 3, 9, 8\] to have 2 channels, but got 3 channels instead"):
        jconv.conv2d(X, jnp.ones((6, 2, 3, 3), jnp.float32))
