"""jconv.conv_general_dilated and jconv.conv_transpose against lax's own: the same results, gradients, shapes,
dtypes and errors, over every argument form lax takes; and inside Flax's unmodified Conv modules."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, strategies as st
from jax import lax

import jconv
from jconv import lax_api

SPATIAL_LETTERS = "HWD"


@st.composite
def lax_calls(draw, dtype=np.float64):
    """Random valid arguments of lax.conv_general_dilated: layouts in any letter order, string or explicit
    (negative, asymmetric) padding, lhs and rhs dilation, feature and batch group counts."""
    n = draw(st.integers(1, 3))
    letters = SPATIAL_LETTERS[:n]
    layout = lambda fixed: "".join(draw(st.permutations(list(fixed + letters))))
    dimension_numbers = (layout("NC"), layout("OI"), layout("NC"))
    batch_groups = draw(st.sampled_from([1, 1, 1, 2]))
    groups = 1 if batch_groups > 1 else draw(st.sampled_from([1, 1, 2, 3]))
    in_per_group, out_per_group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    batch = batch_groups * draw(st.integers(1, 2))
    out_features = out_per_group * groups * batch_groups
    kernel = [draw(st.integers(1, 4)) for _ in range(n)]
    spatial = [draw(st.integers(1, 8)) for _ in range(n)]
    transposed = draw(st.booleans()) and batch_groups == 1
    lhs_dilation = tuple(draw(st.integers(1, 3)) for _ in range(n)) if transposed else None
    rhs_dilation = tuple(draw(st.integers(1, 3)) for _ in range(n))
    # Window strides on a dilated lhs are rare (lax runs those itself): mostly 1 there.
    one_strides = transposed and draw(st.integers(0, 3)) > 0
    strides = (1,) * n if one_strides else tuple(draw(st.integers(1, 3)) for _ in range(n))
    if transposed or draw(st.booleans()):
        padding = tuple((draw(st.integers(-2, 4)), draw(st.integers(-2, 4))) for _ in range(n))
    else:
        padding = draw(st.sampled_from(["SAME", "VALID", "SAME_LOWER"]))
    dims = {"N": batch, "C": in_per_group * groups, "I": in_per_group, "O": out_features,
            **dict(zip(letters, spatial))}
    lhs_shape = tuple(dims[c] for c in dimension_numbers[0])
    rhs_shape = tuple({**dims, **dict(zip(letters, kernel))}[c] for c in dimension_numbers[1])
    kwargs = dict(window_strides=strides, padding=padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                  dimension_numbers=dimension_numbers, feature_group_count=groups, batch_group_count=batch_groups)
    try:
        out = jax.eval_shape(functools.partial(lax.conv_general_dilated, **kwargs),
                             jax.ShapeDtypeStruct(lhs_shape, dtype), jax.ShapeDtypeStruct(rhs_shape, dtype))
    except (TypeError, ValueError):
        out = None
    assume(out is not None and 0 not in out.shape)
    return lhs_shape, rhs_shape, kwargs


def random_arrays(seed, dtype, *shapes):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.complexfloating):
        return [jnp.asarray(rng.standard_normal(s) + 1j * rng.standard_normal(s), dtype) for s in shapes]
    return [jnp.asarray(rng.standard_normal(s), dtype) for s in shapes]


def output_and_gradients(conv, lhs, rhs, cotangent, **kwargs):
    """Output and both vector-Jacobian products, compiled (one program, as a training step runs it)."""

    def run(lhs, rhs, cotangent):
        y, vjp = jax.vjp(lambda lhs, rhs: conv(lhs, rhs, **kwargs), lhs, rhs)
        return (y, *vjp(cotangent))

    return jax.jit(run)(lhs, rhs, cotangent)


def assert_equal_to_lax(conv, lhs, rhs, rtol, **kwargs):
    y_lax = lax.conv_general_dilated(lhs, rhs, **kwargs)
    (cotangent,) = random_arrays(1, y_lax.dtype, y_lax.shape)
    expected = output_and_gradients(lax.conv_general_dilated, lhs, rhs, cotangent, **kwargs)
    got = output_and_gradients(conv, lhs, rhs, cotangent, **kwargs)
    for name, a, b in zip(("output", "lhs gradient", "rhs gradient"), got, expected):
        assert a.shape == b.shape and a.dtype == b.dtype, (name, a.shape, b.shape, a.dtype, b.dtype)
        a, b = np.asarray(a, np.complex128), np.asarray(b, np.complex128)
        scale = max(np.max(np.abs(b), initial=0.0), 1.0)
        assert np.max(np.abs(a - b), initial=0.0) <= rtol * scale, (name, np.max(np.abs(a - b)), kwargs)


# Tolerances relative to the largest magnitude: both sides round each product to the dtype, in other orders.
TOLERANCES = {np.float64: 1e-10, np.complex128: 1e-10, np.float32: 1e-5, np.complex64: 1e-5, jnp.float16: 1e-2,
              jnp.bfloat16: 5e-2}


@given(lax_calls(), st.sampled_from([np.float64, np.float64, np.complex128, np.float32, np.complex64, jnp.float16,
                                     jnp.bfloat16]), st.integers(0, 2**16))
def test_equals_lax(call, dtype, seed):
    lhs_shape, rhs_shape, kwargs = call
    lhs, rhs = random_arrays(seed, dtype, lhs_shape, rhs_shape)
    assert_equal_to_lax(jconv.conv_general_dilated, lhs, rhs, TOLERANCES[dtype], **kwargs)


# The forms Flax's modules and ported TensorFlow code pass: each must run through jconv, not fall back to lax.
COMMON_FORMS = [
    ((2, 9, 9, 8), (3, 3, 1, 8), dict(window_strides=(1, 1), padding="SAME", feature_group_count=8,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    ((2, 9, 9, 8), (3, 3, 2, 12), dict(window_strides=(2, 2), padding=((1, 1), (1, 1)), feature_group_count=4,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))),
    ((2, 8, 9, 9), (12, 8, 1, 1), dict(window_strides=(1, 1), padding="VALID")),
    ((2, 16, 5), (3, 5, 7), dict(window_strides=(1,), padding=((2, 0),), dimension_numbers=("NWC", "WIO", "NWC"))),
    ((2, 5, 6, 7, 3), (3, 3, 3, 3, 4), dict(window_strides=(1, 1, 1), padding="SAME", rhs_dilation=(1, 2, 1),
                                            dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))),
]


@pytest.mark.parametrize("lhs_shape,rhs_shape,kwargs", COMMON_FORMS)
def test_common_forms_run_through_jconv(lhs_shape, rhs_shape, kwargs):
    lhs, rhs = random_arrays(0, np.float64, lhs_shape, rhs_shape)
    assert isinstance(lax_api.plan(lhs, rhs, **kwargs), lax_api.Plan)
    assert_equal_to_lax(jconv.conv_general_dilated, lhs, rhs, 1e-10, **kwargs)


@pytest.mark.parametrize("padding", ["SAME", "VALID", ((1, 2), (0, 1))])
@pytest.mark.parametrize("kernel,strides", [((3, 3), (2, 2)), ((4, 4), (2, 2)), ((2, 5), (2, 3)), ((1, 1), (2, 2))])
@pytest.mark.parametrize("transpose_kernel", [False, True])
def test_conv_transpose_equals_lax(padding, kernel, strides, transpose_kernel):
    lhs, rhs = random_arrays(2, np.float64, (2, 5, 6, 4), (*kernel, 6, 4) if transpose_kernel else (*kernel, 4, 6))
    kwargs = dict(strides=strides, padding=padding, transpose_kernel=transpose_kernel)
    y = jconv.conv_transpose(lhs, rhs, **kwargs)
    np.testing.assert_allclose(y, lax.conv_transpose(lhs, rhs, **kwargs), rtol=1e-10, atol=1e-10)
    if isinstance(padding, str) and not transpose_kernel:  # Flax's ConvTranspose padding strings run through jconv
        dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
        pads = [lax_api._transpose_padding(k, s, padding) for k, s in zip(kernel, strides)]
        outcome = lax_api.plan(lhs, rhs, (1, 1), pads, strides, None, dn)
        assert isinstance(outcome, lax_api.Plan), outcome
    g = jax.grad(lambda l, r: jconv.conv_transpose(l, r, **kwargs).sum(), (0, 1))(lhs, rhs)
    g_lax = jax.grad(lambda l, r: lax.conv_transpose(l, r, **kwargs).sum(), (0, 1))(lhs, rhs)
    for a, b in zip(g, g_lax):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_jit_vmap_and_static_arguments():
    lhs, rhs = random_arrays(3, np.float64, (4, 2, 9, 9, 6), (3, 3, 3, 12))
    kwargs = dict(window_strides=(1, 1), padding="SAME", feature_group_count=2,
                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    f = lambda conv: jax.jit(jax.vmap(lambda x: conv(x, rhs, **kwargs)))
    np.testing.assert_allclose(f(jconv.conv_general_dilated)(lhs), f(lax.conv_general_dilated)(lhs), rtol=1e-12)
    jitted = jax.jit(jconv.conv_general_dilated, static_argnames=("window_strides", "padding", "dimension_numbers",
                                                                   "feature_group_count"))
    np.testing.assert_allclose(jitted(lhs[0], rhs, **kwargs), lax.conv_general_dilated(lhs[0], rhs, **kwargs),
                               rtol=1e-12)


BAD_CALLS = [
    ("rank", (2, 4, 8, 8), (6, 4, 3), dict(window_strides=(1, 1), padding="SAME")),
    ("groups", (2, 4, 8, 8), (6, 4, 3, 3), dict(window_strides=(1, 1), padding="SAME", feature_group_count=3)),
    ("padding string", (2, 4, 8, 8), (6, 4, 3, 3), dict(window_strides=(1, 1), padding="FULL")),
    ("padding pairs", (2, 4, 8, 8), (6, 4, 3, 3), dict(window_strides=(1, 1), padding=(1, 1))),
    ("strides", (2, 4, 8, 8), (6, 4, 3, 3), dict(window_strides=(1,), padding="SAME")),
    ("string padding, lhs dilation", (2, 4, 8, 8), (6, 4, 3, 3),
     dict(window_strides=(1, 1), padding="SAME", lhs_dilation=(2, 2))),
    ("layout", (2, 4, 8, 8), (6, 4, 3, 3), dict(window_strides=(1, 1), padding="SAME",
                                                dimension_numbers=("NCHW", "OIHW", "NCXW"))),
    ("narrowing preferred type", (2, 4, 8, 8), (6, 4, 3, 3),
     dict(window_strides=(1, 1), padding="SAME", preferred_element_type=jnp.float16)),
]


@pytest.mark.parametrize("what,lhs_shape,rhs_shape,kwargs", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_calls_raise_what_lax_raises(what, lhs_shape, rhs_shape, kwargs):
    lhs, rhs = random_arrays(0, np.float32, lhs_shape, rhs_shape)
    with pytest.raises(Exception) as expected:
        lax.conv_general_dilated(lhs, rhs, **kwargs)
    with pytest.raises(expected.type) as got:
        jconv.conv_general_dilated(lhs, rhs, **kwargs)
    assert str(got.value) == str(expected.value)


def test_dtype_mismatch_raises_what_lax_raises():
    lhs, rhs = jnp.ones((1, 2, 5, 5), jnp.float32), jnp.ones((3, 2, 3, 3), jnp.float64)
    with pytest.raises(TypeError) as expected:
        lax.conv_general_dilated(lhs, rhs, (1, 1), "SAME")
    with pytest.raises(TypeError, match=str(expected.value)[:30]):
        jconv.conv_general_dilated(lhs, rhs, (1, 1), "SAME")


def test_an_unknown_lowering_is_an_error_not_a_lax_call():
    x, w = jnp.ones((1, 2, 5, 5)), jnp.ones((3, 2, 3, 3))
    with pytest.raises(ValueError, match="conv_general_dilated: unknown lowering='tap'"):
        jconv.conv_general_dilated(x, w, (1, 1), "SAME", lowering="tap")
    batch_groups = (jnp.ones((4, 2, 5)), jnp.ones((4, 2, 3)), (1,), "SAME")
    with pytest.raises(ValueError, match="unknown lowering"):
        jconv.conv_general_dilated(*batch_groups, batch_group_count=2, lowering="tap")
    with pytest.raises(ValueError, match="lowering='taps' cannot handle this call, which runs lax itself: batch"):
        jconv.conv_general_dilated(*batch_groups, batch_group_count=2, lowering="taps")
    np.testing.assert_array_equal(jconv.conv_general_dilated(*batch_groups, batch_group_count=2, lowering="xla"),
                                  lax.conv_general_dilated(*batch_groups, batch_group_count=2))


def test_what_jconv_leaves_to_lax_is_lax():
    lhs = jnp.arange(2 * 3 * 7, dtype=jnp.int32).reshape(2, 3, 7)
    rhs = jnp.ones((4, 3, 3), jnp.int32)
    outcome = lax_api.plan(lhs, rhs, (1,), "SAME")
    assert isinstance(outcome, str) and "int32" in outcome
    np.testing.assert_array_equal(jconv.conv_general_dilated(lhs, rhs, (1,), "SAME"),
                                  lax.conv_general_dilated(lhs, rhs, (1,), "SAME"))


def test_explain_and_explicit_lowering():
    lhs, rhs = jax.ShapeDtypeStruct((2, 9, 9, 8), jnp.float32), jax.ShapeDtypeStruct((3, 3, 1, 8), jnp.float32)
    kwargs = dict(feature_group_count=8, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    choice = jconv.explain(jconv.conv_general_dilated, lhs, rhs, (1, 1), "SAME", **kwargs)
    assert choice.spec.groups == 8 and choice.spec.channels_last and choice.spec.padding == ((1, 1), (1, 1))
    choice = jconv.explain(jconv.conv_general_dilated, lhs, rhs, window_strides=(1, 1), padding="SAME",
                           lowering="xla", **kwargs)
    assert choice.lowering == "xla"
    with pytest.raises(ValueError, match="lax.conv_general_dilated unchanged.*batch_group_count"):
        jconv.explain(jconv.conv_general_dilated, jax.ShapeDtypeStruct((4, 8, 9, 9), jnp.float32),
                      jax.ShapeDtypeStruct((4, 8, 3, 3), jnp.float32), (1, 1), "SAME", batch_group_count=2)
    x, w = random_arrays(4, np.float64, (2, 9, 9, 8), (3, 3, 1, 8))
    for lowering in ("xla", "taps", "pallas"):
        y = jconv.conv_general_dilated(x, w, (1, 1), "SAME", lowering=lowering, **kwargs)
        np.testing.assert_allclose(y, lax.conv_general_dilated(x, w, (1, 1), "SAME", **kwargs), rtol=1e-10)


def _depthwise_net(make_conv, **conv_kwargs):
    """A small conv net of the three families jconv speeds up (dense, depthwise, grouped), via `make_conv`."""
    return [make_conv(3, 16, (3, 3), **conv_kwargs), make_conv(16, 16, (3, 3), feature_group_count=16, **conv_kwargs),
            make_conv(16, 32, (3, 3), strides=(2, 2), feature_group_count=4, **conv_kwargs)]


def _training_losses(model_loss, params, x, steps=3):
    import optax

    optimizer = optax.sgd(0.05)
    state = optimizer.init(params)
    losses = []
    for _ in range(steps):
        loss, grads = jax.jit(jax.value_and_grad(model_loss))(params, x)
        updates, state = optimizer.update(grads, state)
        params = optax.apply_updates(params, updates)
        losses.append(float(loss))
    return losses


def test_flax_nnx_conv_trains_the_same():
    from flax import nnx

    def build(**kwargs):
        rngs = nnx.Rngs(0)
        return _depthwise_net(lambda i, o, k, **kw: nnx.Conv(i, o, k, padding="SAME", rngs=rngs, **kw), **kwargs)

    x = jnp.asarray(np.random.default_rng(5).standard_normal((4, 12, 12, 3)), jnp.float32)

    def losses(layers):
        graphdef, params = nnx.split(layers)

        def loss(params, x):
            y = x
            for layer in nnx.merge(graphdef, params):
                y = jax.nn.relu(layer(y))
            return jnp.mean(y ** 2)
        return _training_losses(loss, params, x)

    plain, with_jconv = losses(build()), losses(build(conv_general_dilated=jconv.conv_general_dilated))
    np.testing.assert_allclose(with_jconv, plain, rtol=1e-5)
    assert plain[-1] < plain[0]


def test_flax_linen_conv_trains_the_same():
    import flax.linen as nn

    class Net(nn.Module):
        conv: object = None

        @nn.compact
        def __call__(self, x):
            extra = {} if self.conv is None else dict(conv_general_dilated=self.conv)
            for layer in _depthwise_net(lambda i, o, k, **kw: nn.Conv(o, k, padding="SAME", **kw), **extra):
                x = jax.nn.relu(layer(x))
            return x

    x = jnp.asarray(np.random.default_rng(6).standard_normal((4, 12, 12, 3)), jnp.float32)
    params = Net().init(jax.random.key(0), x)

    def losses(model):
        return _training_losses(lambda p, x: jnp.mean(model.apply(p, x) ** 2), params, x)

    plain, with_jconv = losses(Net()), losses(Net(conv=jconv.conv_general_dilated))
    np.testing.assert_allclose(with_jconv, plain, rtol=1e-5)
    assert plain[-1] < plain[0]


def test_where_the_lowering_is_lax_the_callers_call_runs_unchanged():
    """No layout transposes around lax's own convolution: the traced program is the caller's lax call."""
    lhs, rhs = jax.ShapeDtypeStruct((2, 9, 9, 8), jnp.float32), jax.ShapeDtypeStruct((3, 3, 8, 16), jnp.float32)
    kwargs = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"))
    jaxpr = jax.make_jaxpr(lambda l, r: jconv.conv_general_dilated(l, r, (1, 1), "SAME", lowering="xla", **kwargs))
    expected = jax.make_jaxpr(lambda l, r: lax.conv_general_dilated(l, r, (1, 1), "SAME", **kwargs))
    assert str(jaxpr(lhs, rhs)) == str(expected(lhs, rhs))
    jaxpr = str(jax.make_jaxpr(lambda l, r: jconv.conv_general_dilated(l, r, (1, 1), "SAME", lowering="im2col",
                                                                        **kwargs))(lhs, rhs))
    assert "transpose" in jaxpr  # a jconv lowering in torch's layout


def test_operands_lax_cannot_read_raise_what_lax_raises():
    import torch

    lhs, rhs = torch.ones(2, 3, 8, 8), torch.ones(4, 3, 3, 3)
    with pytest.raises(TypeError) as expected:
        lax.conv_general_dilated(lhs, rhs, (1, 1), "SAME")
    with pytest.raises(TypeError) as got:
        jconv.conv_general_dilated(lhs, rhs, (1, 1), "SAME")
    assert str(got.value) == str(expected.value)


def test_kernel_regrouping_inverts_the_transposed_convs_own():
    """lax_api's kernel for a transposed conv, taken back by the transposed lowerings' own map, is lax's kernel."""
    from jconv.lowerings.common import conv_weight_as_transposed, transposed_weight_as_conv

    spec = jconv.conv_transpose2d.build_spec(jax.ShapeDtypeStruct((1, 6, 5, 5), jnp.float64),
                                             jax.ShapeDtypeStruct((6, 4, 3, 2), jnp.float64), None, groups=3)
    (forward,) = random_arrays(7, np.float64, (12, 2, 3, 2))  # (C_out, C_in/g, *k)
    weight = conv_weight_as_transposed(spec, forward)
    assert weight.shape == (6, 4, 3, 2)
    np.testing.assert_array_equal(transposed_weight_as_conv(spec, weight), forward)
