"""jconv.nn (NNX) and jconv.linen modules: torch parity after load_state_dict, init, state_dict, transforms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jconv
from jconv import linen as jl
from jconv import nn as jn

# (class name, constructor kwargs, input shape, call kwargs)
CONFIGS = [
    ("Conv1d", dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2), (2, 4, 11), {}),
    ("Conv1d", dict(in_channels=3, out_channels=3, kernel_size=4, padding="same", padding_mode="reflect",
                    groups=3, dilation=2), (2, 3, 12), {}),
    ("Conv2d", dict(in_channels=3, out_channels=8, kernel_size=3, padding=1), (2, 3, 9, 8), {}),
    ("Conv2d", dict(in_channels=4, out_channels=8, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2),
                    dilation=(1, 2), groups=4, bias=False), (2, 4, 10, 11), {}),
    ("Conv2d", dict(in_channels=2, out_channels=4, kernel_size=3, padding=2, padding_mode="circular"), (1, 2, 6, 7),
     {}),
    ("Conv2d", dict(in_channels=2, out_channels=4, kernel_size=3, padding="valid", padding_mode="replicate"),
     (1, 2, 6, 7), {}),
    ("Conv3d", dict(in_channels=2, out_channels=4, kernel_size=3, padding=1, stride=2, groups=2), (1, 2, 5, 6, 5),
     {}),
    ("ConvTranspose1d", dict(in_channels=4, out_channels=2, kernel_size=4, stride=3, padding=1, output_padding=2),
     (2, 4, 7), {}),
    ("ConvTranspose2d", dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, groups=2,
                             dilation=2), (2, 4, 5, 6), {}),
    ("ConvTranspose2d", dict(in_channels=3, out_channels=2, kernel_size=3, stride=2, padding=1), (2, 3, 5, 5),
     dict(output_size=(10, 10))),
    ("ConvTranspose3d", dict(in_channels=2, out_channels=2, kernel_size=2, stride=2, bias=False), (1, 2, 3, 4, 3),
     {}),
]


def torch_layer(name, kwargs, seed=0):
    torch.manual_seed(seed)
    return getattr(torch.nn, name)(**kwargs).double()


@pytest.mark.parametrize("name,kwargs,shape,call", CONFIGS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CONFIGS)])
def test_nnx_and_linen_match_torch_after_loading_its_state_dict(name, kwargs, shape, call):
    ref_layer = torch_layer(name, kwargs)
    x = np.random.default_rng(0).standard_normal(shape)
    ref = ref_layer(torch.tensor(x), **call).detach().numpy()

    layer = getattr(jn, name)(**kwargs, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    layer.load_state_dict(ref_layer.state_dict())
    y = layer(jnp.asarray(x), **call)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-10, atol=1e-10)

    module = getattr(jl, name)(**kwargs, param_dtype=jnp.float64)
    params = jl.params_from_state_dict(module, ref_layer.state_dict())
    y_linen = module.apply({"params": params}, jnp.asarray(x), **call)
    np.testing.assert_array_equal(np.asarray(y_linen), np.asarray(y))  # bit-identical: one functional core


@pytest.mark.parametrize("name,kwargs,shape,call", CONFIGS[::2], ids=[c[0] for c in CONFIGS[::2]])
def test_module_output_is_bit_identical_to_the_functional_call(name, kwargs, shape, call):
    layer = getattr(jn, name)(**kwargs, rngs=nnx.Rngs(1))
    x = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)
    c = layer.config
    bias = None if layer.bias is None else layer.bias[...]
    if c.transposed:
        expected = getattr(jconv, f"conv_transpose{c.ndim}d")(
            x, layer.weight[...], bias, c.stride, c.padding, c.output_padding, c.groups, c.dilation, **call)
    else:
        expected = getattr(jconv, f"conv{c.ndim}d")(x, layer.weight[...], bias, c.stride, c.padding, c.dilation,
                                                    c.groups, padding_mode=c.padding_mode)
    np.testing.assert_array_equal(np.asarray(layer(x, **call)), np.asarray(expected))


@pytest.mark.parametrize("name,kwargs", [
    ("Conv2d", dict(in_channels=16, out_channels=32, kernel_size=3)),
    ("Conv1d", dict(in_channels=12, out_channels=24, kernel_size=5, groups=4)),
    ("ConvTranspose2d", dict(in_channels=32, out_channels=8, kernel_size=4, groups=2)),
])
def test_init_matches_pytorchs_distribution(name, kwargs):
    """U(-b, b) with b = 1/sqrt(fan_in), fan_in = weight.size(1) * prod(kernel) (note the transposed case)."""
    torch_weight = getattr(torch.nn, name)(**kwargs).weight
    fan_in = torch_weight.shape[1] * np.prod(torch_weight.shape[2:])
    bound = 1 / np.sqrt(fan_in)
    for layer in (getattr(jn, name)(**kwargs, rngs=nnx.Rngs(3)),):
        w, b = np.asarray(layer.weight[...]), np.asarray(layer.bias[...])
        assert w.shape == tuple(torch_weight.shape) and b.shape == (kwargs["out_channels"],)
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
        n = w.size
        # Mean 0 and variance b^2/3 of U(-b, b), within 5 standard errors.
        assert abs(w.mean()) < 5 * bound / np.sqrt(3 * n)
        assert abs(w.var() - bound**2 / 3) < 5 * bound**2 * np.sqrt(4 / 45 / n)
        assert np.abs(b).max() <= bound
    params = getattr(jl, name)(**kwargs).init(jax.random.PRNGKey(0), jnp.zeros(
        (1, kwargs["in_channels"], *(9,) * (torch_weight.ndim - 2))))["params"]
    assert params["weight"].shape == tuple(torch_weight.shape)
    assert np.abs(np.asarray(params["weight"])).max() <= bound
    assert np.abs(np.asarray(params["bias"])).max() <= bound


def test_complex_modules_init_as_torch_and_match_it():
    """torch.nn.Conv2d(..., dtype=torch.cfloat) draws the real and imaginary parts each from U(-b, b); loaded
    into jconv's modules, a complex state_dict gives torch's output."""
    kwargs = dict(in_channels=4, out_channels=16, kernel_size=3, groups=2)
    bound = 1 / np.sqrt(2 * 9)
    weights = [getattr(jn.Conv2d(**kwargs, param_dtype=jnp.complex64, rngs=nnx.Rngs(0)), "weight")[...],
               jl.Conv2d(**kwargs, param_dtype=jnp.complex64).init(
                   jax.random.PRNGKey(0), jnp.zeros((1, 4, 9, 9), jnp.complex64))["params"]["weight"]]
    for w in map(np.asarray, weights):
        assert w.dtype == np.complex64 and w.shape == (16, 2, 3, 3)
        for part in (w.real, w.imag):
            assert np.abs(part).max() <= bound and np.abs(part).max() > 0.9 * bound
        assert abs(np.corrcoef(w.real.ravel(), w.imag.ravel())[0, 1]) < 0.3  # independent parts, not one draw

    torch.manual_seed(0)
    ref_layer = torch.nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, dtype=torch.cdouble)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 5, 5)) + 1j * rng.standard_normal((2, 4, 5, 5))
    layer = jn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, param_dtype=jnp.complex128, rngs=nnx.Rngs(0))
    layer.load_state_dict(ref_layer.state_dict())
    np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), ref_layer(torch.tensor(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-10)


def test_complex_state_dicts_need_complex_parameters():
    """from_torch keeps a complex module complex (complex64, as it gives float32 for real ones); loading a complex
    state_dict into real parameters is refused instead of dropping the imaginary part."""
    ref_layer = torch.nn.Conv1d(2, 4, 3, dtype=torch.cfloat)
    x = np.random.default_rng(0).standard_normal((2, 2, 9)) * (1 + 1j)
    expected = ref_layer(torch.tensor(x, dtype=torch.cfloat)).detach().numpy()
    layer = jn.from_torch(ref_layer)
    module, params = jl.from_torch(ref_layer)
    assert layer.weight[...].dtype == params["weight"].dtype == jnp.complex64
    for y in (layer(jnp.asarray(x, jnp.complex64)), module.apply({"params": params}, jnp.asarray(x, jnp.complex64))):
        np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
    assert jn.from_torch(ref_layer, param_dtype=jnp.complex128).weight[...].dtype == jnp.complex128
    message = ("Conv1d.load_state_dict: weight is complex64, but the module's param_dtype is float32, which would "
               "drop its imaginary part")
    with pytest.raises(TypeError, match=message):
        jn.Conv1d(2, 4, 3, rngs=nnx.Rngs(0)).load_state_dict(ref_layer.state_dict())
    with pytest.raises(TypeError, match=message):
        jl.params_from_state_dict(jl.Conv1d(2, 4, 3), ref_layer.state_dict())


def test_state_dict_round_trip_is_bit_exact_and_strict_errors():
    a = jn.Conv2d(3, 4, 3, rngs=nnx.Rngs(0))
    b = jn.Conv2d(3, 4, 3, rngs=nnx.Rngs(1))
    b.load_state_dict(a.state_dict())
    for key in ("weight", "bias"):
        np.testing.assert_array_equal(b.state_dict()[key], a.state_dict()[key])
    with pytest.raises(KeyError, match=r'Error\(s\) in loading state_dict for Conv2d: Missing key\(s\) in state_dict: "bias"'):
        b.load_state_dict({"weight": a.state_dict()["weight"]})
    with pytest.raises(KeyError, match=r'Unexpected key\(s\) in state_dict: "extra"'):
        b.load_state_dict({**a.state_dict(), "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"size mismatch for weight: copying a param with shape \(4, 3, 5, 5\)"):
        b.load_state_dict({"weight": np.zeros((4, 3, 5, 5)), "bias": np.zeros(4)})
    b.load_state_dict({"weight": np.zeros((4, 3, 3, 3))}, strict=False)
    assert not b.state_dict()["weight"].any() and b.state_dict()["bias"].any()
    nobias = jn.Conv1d(2, 2, 1, bias=False, rngs=nnx.Rngs(0))
    assert set(nobias.state_dict()) == {"weight"} and nobias.bias is None


def test_load_state_dict_accepts_torch_tensors_including_bfloat16():
    ref = torch.nn.Conv1d(2, 3, 3).to(torch.bfloat16)
    layer = jn.Conv1d(2, 3, 3, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    layer.load_state_dict(ref.state_dict())
    np.testing.assert_array_equal(np.asarray(layer.weight[...], np.float32), ref.weight.float().detach().numpy())


@pytest.mark.parametrize("name,kwargs", [(c[0], c[1]) for c in CONFIGS])
def test_from_torch(name, kwargs):
    ref = torch_layer(name, kwargs, seed=5).float()
    layer = jn.from_torch(ref)
    assert type(layer).__name__ == name
    np.testing.assert_array_equal(layer.state_dict()["weight"], ref.weight.detach().numpy())
    module, params = jl.from_torch(ref)
    np.testing.assert_array_equal(np.asarray(params["weight"]), ref.weight.detach().numpy())
    assert repr(layer) == repr(ref) == repr(module)


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="from_torch: expected one of torch.nn.Conv1d"):
        jn.from_torch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="Conv2d.from_torch: expected a torch.nn.Conv2d, but got Conv1d"):
        jn.Conv2d.from_torch(torch.nn.Conv1d(2, 2, 1))


def test_repr_shows_only_non_defaults():
    assert repr(jn.Conv2d(3, 16, 3, rngs=nnx.Rngs(0))) == "Conv2d(3, 16, kernel_size=(3, 3), stride=(1, 1))"
    layer = jn.ConvTranspose1d(4, 2, 3, stride=2, output_padding=1, bias=False, channels_last=True,
                               lowering="xla", rngs=nnx.Rngs(0))
    assert repr(layer) == ("ConvTranspose1d(4, 2, kernel_size=(3,), stride=(2,), output_padding=(1,), bias=False, "
                           "channels_last=True, lowering='xla')")
    assert repr(jl.Conv2d(3, 6, 3, padding="same", groups=3, padding_mode="reflect")) == \
        "Conv2d(3, 6, kernel_size=(3, 3), stride=(1, 1), padding=same, groups=3, padding_mode=reflect)"


@pytest.mark.parametrize("factory,regex,exc", [
    (lambda: jn.Conv2d(3, 4, 3, groups=2, rngs=nnx.Rngs(0)), "Conv2d: in_channels must be divisible by groups",
     ValueError),
    (lambda: jn.Conv2d(4, 3, 3, groups=2, rngs=nnx.Rngs(0)), "out_channels must be divisible by groups", ValueError),
    (lambda: jn.Conv2d(4, 4, 3, groups=0, rngs=nnx.Rngs(0)), "groups must be a positive integer", ValueError),
    (lambda: jn.Conv2d(4, 4, 3, padding="full", rngs=nnx.Rngs(0)),
     r"Invalid padding string 'full', should be one of \['same', 'valid'\]", ValueError),
    (lambda: jn.Conv2d(4, 4, 3, padding="same", stride=2, rngs=nnx.Rngs(0)),
     "padding='same' is not supported for strided convolutions", ValueError),
    (lambda: jn.Conv1d(4, 4, 3, padding_mode="mirror", rngs=nnx.Rngs(0)), "padding_mode must be one of", ValueError),
    (lambda: jn.ConvTranspose2d(4, 4, 3, padding_mode="reflect", rngs=nnx.Rngs(0)),
     'Only "zeros" padding mode is supported for ConvTranspose2d', ValueError),
    (lambda: jn.ConvTranspose2d(4, 4, 3, stride=2, output_padding=2, rngs=nnx.Rngs(0)),
     "output padding must be smaller than either stride or dilation", ValueError),
    (lambda: jn.Conv2d(4, 4, (3, 3, 3), rngs=nnx.Rngs(0)), "expected kernel_size to be a single integer value",
     ValueError),
    (lambda: jn.Conv2d(4, 4, 3, rngs=0), "rngs must be an nnx.Rngs", TypeError),
    (lambda: jl.Conv2d(3, 4, 3, groups=2), "Conv2d: in_channels must be divisible by groups", ValueError),
    (lambda: jl.ConvTranspose1d(3, 4, 3, padding_mode="circular"), 'Only "zeros" padding mode', ValueError),
])
def test_construction_validates_eagerly(factory, regex, exc):
    with pytest.raises(exc, match=regex):
        factory()


@pytest.mark.parametrize("module", ("nnx", "linen"))
@pytest.mark.parametrize("kwargs,regex,exc", [
    (dict(lowering="fast"), r"Conv2d: unknown lowering='fast'; expected one of", ValueError),
    (dict(lowering=3), "Conv2d: lowering must be a string", TypeError),
    (dict(precision="bad"), "Conv2d: precision must be None", ValueError),
    (dict(channels_last=1), "Conv2d: channels_last must be a bool, but got 1", TypeError),
    (dict(dtype="notatype"), "Conv2d: dtype must be a floating-point or complex dtype or None, but got 'notatype'",
     TypeError),
    (dict(dtype=jnp.int32), "Conv2d: dtype must be one of float16, .* but got int32", TypeError),
    (dict(param_dtype=None), "Conv2d: param_dtype must be a floating-point or complex dtype, but got None", TypeError),
])
def test_jconv_options_are_validated_at_construction(module, kwargs, regex, exc):
    """jconv's own arguments fail in the constructor, as PyTorch's do, not at the first call (or in repr)."""
    with pytest.raises(exc, match=regex):
        if module == "nnx":
            jn.Conv2d(4, 4, 3, rngs=nnx.Rngs(0), **kwargs)
        else:
            jl.Conv2d(4, 4, 3, **kwargs)


def test_torch_dtypes_are_accepted_where_a_dtype_is():
    x = jnp.ones((1, 4, 6, 6))
    layer = jn.Conv2d(4, 4, 3, dtype=torch.float16, param_dtype=torch.float64, rngs=nnx.Rngs(0))
    assert layer.weight[...].dtype == jnp.float64 and layer(x).dtype == jnp.float16
    assert "dtype=float16" in repr(layer)
    params = jl.Conv2d(4, 4, 3, param_dtype=torch.bfloat16).init(jax.random.key(0), x)["params"]
    assert params["weight"].dtype == jnp.bfloat16


@pytest.mark.parametrize("value", [None, "weights", np.empty((4, 4, 3, 3), object)],
                         ids=["None", "str", "object-array"])
def test_load_state_dict_refuses_non_numeric_values(value):
    """None or a string used to report a shape mismatch, and an object array loaded NaN silently."""
    layer = jn.Conv2d(4, 4, 3, rngs=nnx.Rngs(0))
    before = np.asarray(layer.weight[...])
    with pytest.raises(TypeError, match="weight must be a numeric array or tensor"):
        layer.load_state_dict({"weight": value, "bias": np.zeros(4)})
    np.testing.assert_array_equal(np.asarray(layer.weight[...]), before)


def test_mixed_precision_dtype_and_param_dtype():
    layer = jn.Conv2d(2, 4, 3, padding=1, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert layer.weight[...].dtype == jnp.float32
    x = jnp.ones((1, 2, 5, 5), jnp.float32)
    assert layer(x).dtype == jnp.bfloat16
    assert jn.Conv2d(2, 4, 3, rngs=nnx.Rngs(0))(x.astype(jnp.bfloat16)).dtype == jnp.float32  # promoted


def test_jit_grad_split_merge():
    model = jn.Conv2d(2, 4, 3, padding=1, groups=2, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 2, 6, 6)), jnp.float32)

    @nnx.jit
    def loss(model, x):
        return (model(x) ** 2).mean()

    grads = nnx.grad(loss)(model, x)
    w_grad = grads["weight"][...]
    expected = jax.grad(lambda w: (jconv.conv2d(x, w, model.bias[...], padding=1, groups=2) ** 2).mean())(
        model.weight[...])
    np.testing.assert_allclose(np.asarray(w_grad), np.asarray(expected), rtol=1e-6, atol=1e-7)
    graphdef, state = nnx.split(model)
    clone = nnx.merge(graphdef, state)
    np.testing.assert_array_equal(np.asarray(clone(x)), np.asarray(model(x)))
    np.testing.assert_allclose(float(loss(model, x)), float((model(x) ** 2).mean()), rtol=1e-6)
    # linen under jit and grad
    module = jl.Conv2d(2, 4, 3, padding=1, groups=2)
    params = module.init(jax.random.PRNGKey(0), x)["params"]
    g = jax.jit(jax.grad(lambda p: (module.apply({"params": p}, x) ** 2).mean()))(params)
    assert g["weight"].shape == (4, 1, 3, 3) and g["bias"].shape == (4,)


@pytest.mark.parametrize("name", ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
                                  "ConvTranspose3d"])
def test_linen_modules_tabulate(name):
    """Flax's Module.tabulate traces the module with interceptors; the config is built outside them (nn.nowrap)."""
    n = int(name[-2])
    table = getattr(jl, name)(3, 4, 3, stride=2).tabulate(jax.random.key(0), jnp.ones((1, 3) + (5,) * n))
    count = 3 * 4 * 3 ** n + 4
    assert name in table and "weight" in table and f"{count} " in table, table


def test_linen_modules_tabulate_nested():
    import flax.linen as nn

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = jl.Conv2d(3, 8, 3, padding=1, groups=1)(x)
            return jl.ConvTranspose2d(8, 4, 2, stride=2)(nn.relu(x))

    table = Block().tabulate(jax.random.key(0), jnp.ones((1, 3, 6, 6)))
    assert "Conv2d_0" in table and "ConvTranspos" in table, table  # rich shortens long names in the table
    assert f"{8 * 3 * 9 + 8} " in table and f"{8 * 4 * 4 + 4} " in table, table
    assert f"Total Parameters: {8 * 3 * 9 + 8 + 8 * 4 * 4 + 4} " in table, table


# --- initializers, reset_parameters, partition specs (as nnx.Conv / linen.Conv take them) -----------------------


@pytest.mark.parametrize("name", ["Conv2d", "ConvTranspose1d"])
def test_nnx_initializers_and_reset_parameters(name):
    n = 2 if name == "Conv2d" else 1
    kwargs = dict(in_channels=4, out_channels=6, kernel_size=3, groups=2)
    default = getattr(jn, name)(**kwargs, rngs=nnx.Rngs(0))
    seen = []

    def kernel_init(key, shape, dtype):  # Flax's signature, called with PyTorch's weight shape
        seen.append((tuple(shape), jnp.dtype(dtype)))
        return jnp.full(shape, 0.5, dtype)

    layer = getattr(jn, name)(**kwargs, kernel_init=kernel_init, bias_init=nnx.initializers.ones,
                              param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    assert seen == [(layer.config.weight_shape, jnp.dtype(jnp.float64))]
    np.testing.assert_array_equal(layer.weight[...], 0.5)
    np.testing.assert_array_equal(layer.bias[...], 1.0)
    # reset_parameters draws again in place; with the constructor's seed it gives the constructor's parameters.
    weight = default.weight
    first = np.asarray(default.weight[...])
    default.reset_parameters(nnx.Rngs(1))
    assert default.weight is weight and not np.array_equal(default.weight[...], first)
    default.reset_parameters(nnx.Rngs(0))
    np.testing.assert_array_equal(default.weight[...], first)
    x = jnp.ones((1, 4) + (7,) * n)
    assert layer(x).shape == default(x).shape


def test_partition_specs_as_flax_layers_take_them():
    import flax.linen as nn

    spec = ("model", None, None, None)
    with jax.set_mesh(jax.make_mesh((1,), ("model",))):
        layer = jn.Conv2d(3, 8, 3, kernel_init=nnx.with_partitioning(
            nnx.initializers.lecun_normal(in_axis=1, out_axis=0), spec), bias_metadata={"out_sharding": ("model",)},
            rngs=nnx.Rngs(0))
        specs = nnx.get_partition_spec(nnx.state(layer))
        assert specs["weight"].get_value() == jax.sharding.PartitionSpec(*spec)
        assert specs["bias"].get_value() == jax.sharding.PartitionSpec("model")
        layer.reset_parameters(nnx.Rngs(1))  # annotations kept
        assert nnx.get_partition_spec(nnx.state(layer))["weight"].get_value() == jax.sharding.PartitionSpec(*spec)
    module = jl.Conv2d(3, 8, 3, kernel_init=nn.with_partitioning(nn.initializers.lecun_normal(in_axis=1, out_axis=0),
                                                                  spec))
    variables = module.init(jax.random.key(0), jnp.ones((1, 3, 8, 8)))
    assert nn.get_partition_spec(variables)["params"]["weight"] == jax.sharding.PartitionSpec(*spec)


@pytest.mark.parametrize("make", [
    lambda **kw: jn.Conv2d(3, 8, 3, rngs=nnx.Rngs(0), **kw),
    lambda **kw: jl.Conv2d(3, 8, 3, **kw),
])
def test_bad_initializers_fail_in_the_constructor(make):
    with pytest.raises(TypeError, match="Conv2d: kernel_init must be None or an initializer"):
        make(kernel_init="lecun_normal")
    with pytest.raises(TypeError, match="Conv2d: bias_init must be None"):
        make(bias_init=0.0)


def test_linen_initializers():
    module = jl.ConvTranspose2d(4, 6, 3, kernel_init=jax.nn.initializers.zeros, bias_init=jax.nn.initializers.ones)
    params = module.init(jax.random.key(0), jnp.ones((1, 4, 5, 5)))["params"]
    assert params["weight"].shape == (4, 6, 3, 3)
    np.testing.assert_array_equal(params["weight"], 0.0)
    np.testing.assert_array_equal(params["bias"], 1.0)


def test_training_with_weights_sharded_over_output_channels_on_8_devices():
    import json
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripts", "sharded_training.py")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JCONV_DETERMINISTIC")}
    proc = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    for when in ("loaded", "trained"):  # loaded: jconv.nn.load_state_dict keeps each parameter's sharding
        assert all(spec.startswith("P('model'") for spec in result["shardings"][when].values()), result
    np.testing.assert_allclose(result["sharded"], result["plain"], rtol=1e-5)
    assert result["plain"][-1] < result["plain"][0]


@pytest.mark.parametrize("torch_dtype,expected", [(torch.float16, jnp.float16), (torch.bfloat16, jnp.bfloat16),
                                                  (torch.float64, jnp.float64), (torch.complex64, jnp.complex64)])
def test_from_torch_keeps_the_modules_dtype(torch_dtype, expected):
    module = torch.nn.ConvTranspose2d(3, 4, 3, dtype=torch_dtype)
    layer = jn.from_torch(module)
    linen_module, params = jl.from_torch(module)
    assert layer.weight[...].dtype == expected and layer.bias[...].dtype == expected
    assert params["weight"].dtype == expected and linen_module.param_dtype == expected
    np.testing.assert_array_equal(np.asarray(layer.weight[...], np.complex128),
                                  module.weight.detach().to(torch.complex128).numpy())
    wide = jnp.complex128 if expected == jnp.complex64 else jnp.float64
    assert jn.from_torch(module, param_dtype=wide).weight[...].dtype == wide  # the caller's choice wins


def test_bad_parameter_metadata_fails_in_the_constructor():
    with pytest.raises(TypeError, match=r"Conv2d: kernel_metadata must be a mapping .*out_sharding.*tuple"):
        jn.Conv2d(3, 8, 3, kernel_metadata=("model", None), rngs=nnx.Rngs(0))
