"""Whole PyTorch models into Flax: jconv.nn.load_state_dict / state_dict (NNX) and jconv.linen's (Linen trees)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import linen, nnx

import jconv


class TorchNet(torch.nn.Module):
    """Every layer kind the porting rules know, under Sequential, ModuleList and ModuleDict names."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.BatchNorm2d(4))
        self.blocks = torch.nn.ModuleList([torch.nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2),
                                           torch.nn.GroupNorm(2, 4)])
        self.heads = torch.nn.ModuleDict({"proj": torch.nn.Linear(4, 5), "norm": torch.nn.LayerNorm(5),
                                          "seq": torch.nn.Conv1d(1, 2, 3, padding=1)})
        self.embedding = torch.nn.Embedding(7, 5)
        self.token = torch.nn.Parameter(torch.randn(5))

    def forward(self, x, idx):
        y = self.blocks[1](self.blocks[0](self.features(x))).mean((2, 3))
        y = self.heads["norm"](self.heads["proj"](y)) + self.embedding(idx) + self.token
        return self.heads["seq"](y[:, None, :]).flatten(1)


def torch_net(seed=0):
    torch.manual_seed(seed)
    net = TorchNet()
    bn = net.features[2]
    with torch.no_grad():  # non-trivial statistics and affine parameters, so that a swapped pair shows
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
        for norm in (net.blocks[1], net.heads["norm"]):
            norm.weight.uniform_(0.5, 2), norm.bias.uniform_(-1, 1)
        bn.num_batches_tracked.fill_(17)
    return net.eval()


def channels_last(f, x):
    return jnp.moveaxis(f(jnp.moveaxis(x, 1, -1)), -1, 1)


class NNXNet(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.features = nnx.Sequential(
            jconv.nn.Conv2d(3, 4, 3, padding=1, rngs=rngs), jax.nn.relu,
            nnx.BatchNorm(4, axis=1, use_running_average=True, momentum=0.9, epsilon=1e-5, rngs=rngs))
        self.blocks = nnx.List([jconv.nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2, rngs=rngs),
                                nnx.GroupNorm(4, num_groups=2, epsilon=1e-5, rngs=rngs)])
        self.heads = nnx.Dict({"proj": nnx.Linear(4, 5, rngs=rngs), "norm": nnx.LayerNorm(5, epsilon=1e-5, rngs=rngs),
                               "seq": jconv.nn.Conv1d(1, 2, 3, padding=1, rngs=rngs)})
        self.embedding = nnx.Embed(7, 5, rngs=rngs)
        self.token = nnx.Param(jnp.zeros(5))

    def __call__(self, x, idx):
        y = channels_last(self.blocks[1], self.blocks[0](self.features(x))).mean((2, 3))
        y = self.heads["norm"](self.heads["proj"](y)) + self.embedding(idx) + self.token
        return self.heads["seq"](y[:, None, :]).reshape(y.shape[0], -1)


class LinenNet(linen.Module):
    def setup(self):
        self.features = linen.Sequential([jconv.linen.Conv2d(3, 4, 3, padding=1), jax.nn.relu,
                                          linen.BatchNorm(use_running_average=True, axis=1, epsilon=1e-5)])
        self.blocks = [jconv.linen.ConvTranspose2d(4, 4, 2, stride=2, groups=2),
                       linen.GroupNorm(num_groups=2, epsilon=1e-5)]
        self.heads = {"proj": linen.Dense(5), "norm": linen.LayerNorm(epsilon=1e-5),
                      "seq": jconv.linen.Conv1d(1, 2, 3, padding=1)}
        self.embedding = linen.Embed(7, 5)
        self.token = self.param("token", linen.initializers.zeros, (5,))

    def __call__(self, x, idx):
        y = channels_last(self.blocks[1], self.blocks[0](self.features(x))).mean((2, 3))
        y = self.heads["norm"](self.heads["proj"](y)) + self.embedding(idx) + self.token
        return self.heads["seq"](y[:, None, :]).reshape(y.shape[0], -1)


INPUTS = (np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32), np.array([1, 6]))


def torch_output(net):
    with torch.no_grad():
        return net(*(torch.from_numpy(a) for a in INPUTS)).numpy()


def linen_variables():
    return LinenNet().init(jax.random.key(0), *INPUTS)


def as_torch(sd):
    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


def assert_same_parameters(a, b):
    a, b = a.state_dict(), b.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(a[k], b[k]), k


def test_nnx_model_loads_a_torch_model_and_gives_its_outputs():
    net, model = torch_net(), NNXNet(nnx.Rngs(0))
    result = jconv.nn.load_state_dict(model, net.state_dict())
    assert result == jconv.nn.IncompatibleKeys([], [])
    np.testing.assert_allclose(np.asarray(model(*INPUTS)), torch_output(net), rtol=1e-5, atol=1e-5)


def test_linen_variables_load_a_torch_model_and_give_its_outputs():
    net, variables = torch_net(), linen_variables()
    loaded, result = jconv.linen.load_state_dict(variables, net.state_dict())
    assert result == ([], [])
    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(variables)
    np.testing.assert_allclose(np.asarray(LinenNet().apply(loaded, *INPUTS)), torch_output(net), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("flavour", ["nnx", "linen"])
def test_round_trip_torch_to_flax_to_torch_is_exact(flavour):
    """num_batches_tracked has no Flax counterpart: torch's BatchNorm keeps its own when the key is absent."""
    net, other = torch_net(0), torch_net(1)
    if flavour == "nnx":
        model = NNXNet(nnx.Rngs(0))
        jconv.nn.load_state_dict(model, net.state_dict())
        sd = jconv.nn.state_dict(model)
    else:
        loaded = jconv.linen.load_state_dict(linen_variables(), net.state_dict())[0]
        assert "heads_norm.bias" in jconv.linen.state_dict(loaded)  # a setup dict's member, named as Linen does
        sd = jconv.linen.state_dict(loaded, like=other.state_dict())
    assert sorted(sd) == sorted(k for k in net.state_dict() if not k.endswith("num_batches_tracked"))
    other.load_state_dict(as_torch(sd))  # strict
    assert_same_parameters(net, other)


def nnx_values(model):
    return {k: v.copy() for k, v in jconv.nn.state_dict(model).items()}


@pytest.mark.parametrize("flavour", ["nnx", "linen"])
def test_missing_and_unexpected_keys_raise_or_are_returned(flavour):
    sd = dict(torch_net().state_dict())
    del sd["heads.proj.bias"]
    sd["heads.extra.weight"] = torch.zeros(3)

    def load(strict):
        if flavour == "nnx":
            return jconv.nn.load_state_dict(NNXNet(nnx.Rngs(0)), sd, strict=strict)
        return jconv.linen.load_state_dict(linen_variables(), sd, strict=strict)[1]

    with pytest.raises(KeyError, match=r'Missing key\(s\) in state_dict: "heads.proj.bias".*Unexpected key\(s\) in '
                                       r'state_dict: "heads.extra.weight"'):
        load(True)
    assert load(False) == (["heads.proj.bias"], ["heads.extra.weight"])


def test_a_wrong_shape_names_its_key_and_leaves_the_nnx_model_as_it_was():
    model = NNXNet(nnx.Rngs(0))
    before = nnx_values(model)
    sd = dict(torch_net().state_dict())
    sd["heads.proj.weight"] = torch.zeros(5, 3)  # keys before it in the tree are valid and would load first
    with pytest.raises(ValueError, match=r"size mismatch for heads.proj.weight: copying a param with shape \(5, 3\) "
                                         r"from checkpoint, the shape in current model is \(5, 4\)"):
        jconv.nn.load_state_dict(model, sd)
    after = nnx_values(model)
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_linen_load_leaves_its_input_tree_unchanged_and_refuses_a_wrong_shape():
    variables = linen_variables()
    before = jax.tree_util.tree_map(np.array, variables)
    jconv.linen.load_state_dict(variables, torch_net().state_dict())
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, jax.tree_util.tree_map(np.array, variables))
    sd = dict(torch_net().state_dict())
    sd["embedding.weight"] = torch.zeros(5, 7)
    with pytest.raises(ValueError, match=r"size mismatch for embedding.weight"):
        jconv.linen.load_state_dict(variables, sd)


def test_values_are_cast_to_each_variable_dtype_from_any_array_kind():
    """bfloat16 torch tensors, float64 NumPy arrays and JAX arrays land in the float32 variables."""
    net = torch_net()
    sd = {k: (v.to(torch.bfloat16) if k.startswith("heads") else v.numpy().astype(np.float64) if k.startswith(
        "blocks") else jnp.asarray(v.numpy())) for k, v in net.state_dict().items()}
    model = NNXNet(nnx.Rngs(0))
    jconv.nn.load_state_dict(model, sd)
    assert model.heads["proj"].kernel[...].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(model.heads["proj"].kernel[...]),
                                  net.heads["proj"].weight.detach().to(torch.bfloat16).float().numpy().T)


def test_flax_conv_kernels_are_transposed_to_torch_layout():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 6, (3, 5), groups=3)
    layer = nnx.Conv(3, 6, (3, 5), feature_group_count=3, padding="VALID", rngs=nnx.Rngs(0))
    jconv.nn.load_state_dict(layer, conv.state_dict())
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 9)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(channels_last(layer, x)), conv(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-5)
    assert {k: v.shape for k, v in jconv.nn.state_dict(layer).items()} == {"weight": (6, 1, 3, 5), "bias": (6,)}


@pytest.mark.parametrize("call,regex", [
    (lambda: jconv.nn.load_state_dict({"weight": 1}, {}), r"load_state_dict: expected an nnx.Module, but got dict"),
    (lambda: jconv.nn.state_dict([1]), r"state_dict: expected an nnx.Module, but got list"),
    (lambda: jconv.nn.load_state_dict(NNXNet(nnx.Rngs(0)), [1]), r"expected a mapping of names to arrays"),
    (lambda: jconv.nn.load_state_dict(NNXNet(nnx.Rngs(0)), {}, strict="no"), r"strict must be a bool"),
    (lambda: jconv.linen.load_state_dict(3, {}), r"expected a Linen variable tree"),
])
def test_bad_arguments_are_type_errors(call, regex):
    with pytest.raises(TypeError, match=regex):
        call()
