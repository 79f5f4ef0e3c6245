"""Flax NNX modules that hold a convolution's parameters and call jconv's functional core.

    layer = jconv.nn.Conv2d(3, 16, 3, stride=2, padding=1, rngs=nnx.Rngs(0))
    y = layer(x)                                   # (N, 3, H, W) -> (N, 16, H', W')
    layer.load_state_dict(torch_layer.state_dict())
    layer = jconv.nn.from_torch(torch_layer)       # the same, building the module too
    jconv.nn.load_state_dict(model, torch_model.state_dict())   # a whole model: NNX tree named like torch's

Parameters are `weight` and `bias` (nnx.Param) with PyTorch's shapes and initialisation; `bias=False` means no
bias parameter. `dtype` is the compute dtype (None: promote input and parameters), `param_dtype` the storage.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jconv import porting
from jconv.layers import (
    LayerConfig, check_initializers, check_options, check_state_dict, make_config, torch_module_arguments)


class _ConvBase(nnx.Module):
    """Parameter holding, state_dict and repr shared by the forward and transposed modules."""

    config: LayerConfig

    def _setup(self, config: LayerConfig, options: dict, rngs):
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"{config.name}: rngs must be an nnx.Rngs, but got {type(rngs).__name__}")
        check_initializers(config.name, kernel_init=options["kernel_init"], bias_init=options["bias_init"])
        for arg in ("kernel_metadata", "bias_metadata"):
            if not isinstance(options[arg], Mapping):
                raise TypeError(f"{config.name}: {arg} must be a mapping (nnx.Param's metadata, e.g. "
                                f"out_sharding), but got {type(options[arg]).__name__}")
        checked = check_options(config.name, dtype=options["dtype"], param_dtype=options["param_dtype"],
                                channels_last=options["channels_last"], precision=options["precision"],
                                lowering=options["lowering"])
        self.config = config
        self.dtype = checked["dtype"]
        self.param_dtype = checked["param_dtype"]
        self.channels_last = checked["channels_last"]
        self.precision = checked["precision"]
        self.lowering = checked["lowering"]
        self.kernel_init, self.bias_init = options["kernel_init"], options["bias_init"]
        self.weight, self.bias = self._parameters(rngs, options["kernel_metadata"], options["bias_metadata"])

    def _parameters(self, rngs: nnx.Rngs, kernel_metadata: Mapping[str, Any], bias_metadata: Mapping[str, Any]):
        """Freshly drawn (weight, bias or None) Params, annotated by the initializers (nnx.with_partitioning) and
        the metadata, as nnx.Conv's are."""
        weight, bias = self.config.init(rngs.params(), self.param_dtype, self.kernel_init, self.bias_init)
        return (nnx.Param(weight, **kernel_metadata), None if bias is None else nnx.Param(bias, **bias_metadata))

    def reset_parameters(self, rngs: nnx.Rngs) -> None:
        """Draw the parameters again, in place (annotations kept), with the module's initializers: PyTorch's
        reset_parameters, with an nnx.Rngs."""
        weight, bias = self._parameters(rngs, {}, {})
        self.weight[...] = weight[...]
        if bias is not None:
            self.bias[...] = bias[...]

    def __call__(self, x, output_size=None):
        """The convolution of x (output_size: transposed modules only, as in PyTorch)."""
        return self.config.apply(
            x, self.weight[...], None if self.bias is None else self.bias[...], output_size=output_size,
            dtype=self.dtype, channels_last=self.channels_last, precision=self.precision, lowering=self.lowering)

    # PyTorch's attribute names, for ported code that reads them.
    in_channels = property(lambda self: self.config.in_channels)
    out_channels = property(lambda self: self.config.out_channels)
    kernel_size = property(lambda self: self.config.kernel_size)
    stride = property(lambda self: self.config.stride)
    padding = property(lambda self: self.config.padding)
    dilation = property(lambda self: self.config.dilation)
    groups = property(lambda self: self.config.groups)
    padding_mode = property(lambda self: self.config.padding_mode)
    output_padding = property(lambda self: self.config.output_padding)

    def state_dict(self) -> dict:
        """{"weight": np.ndarray, "bias": np.ndarray} with PyTorch's keys and shapes (no "bias" without one)."""
        out = {"weight": np.asarray(self.weight[...])}
        if self.bias is not None:
            out["bias"] = np.asarray(self.bias[...])
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Load PyTorch-keyed arrays (NumPy, JAX, torch tensors, anything with __array__), cast to param_dtype."""
        arrays = check_state_dict(self.config.name, state_dict, self.config.parameter_shapes, strict,
                                  self.weight[...].dtype)
        if "weight" in arrays:
            self.weight[...] = jnp.asarray(arrays["weight"], self.weight[...].dtype)
        if "bias" in arrays:
            self.bias[...] = jnp.asarray(arrays["bias"], self.bias[...].dtype)

    @classmethod
    def from_torch(cls, module: Any, **options) -> "_ConvBase":
        """The jconv equivalent of a torch.nn conv module, with its parameters (options: dtype, lowering, ...)."""
        name, args = torch_module_arguments(module)
        if name != cls.__name__ and cls.__name__ in _CLASSES:
            raise TypeError(f"{cls.__name__}.from_torch: expected a torch.nn.{cls.__name__}, but got {name}")
        rngs = options.pop("rngs", None) or nnx.Rngs(0)
        layer = _CLASSES[name](**{**args, **options}, rngs=rngs)  # the caller's options override (param_dtype)
        layer.load_state_dict(module.state_dict())
        return layer

    def __repr__(self) -> str:
        return self.config.module_repr(self)

    __str__ = __repr__  # print(layer) as in PyTorch (NNX's own __str__ prints the whole tree)


def _options(arguments: dict) -> dict:
    """A constructor's jconv and Flax arguments (everything but PyTorch's), by name."""
    return {k: arguments[k] for k in ("dtype", "param_dtype", "channels_last", "precision", "lowering", "kernel_init",
                                      "bias_init", "kernel_metadata", "bias_metadata")}


class _ConvNd(_ConvBase):
    ndim = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *, dtype=None,
                 param_dtype=jnp.float32, channels_last: bool = False, precision=None, lowering: str = "auto",
                 kernel_init=None, bias_init=None, kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
                 bias_metadata: Mapping[str, Any] = MappingProxyType({}), rngs: nnx.Rngs):
        config = make_config(type(self).__name__, self.ndim, False, in_channels, out_channels, kernel_size, stride,
                             padding, dilation, groups, bias, padding_mode)
        self._setup(config, _options(locals()), rngs)


class _ConvTransposeNd(_ConvBase):
    ndim = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros", *, dtype=None,
                 param_dtype=jnp.float32, channels_last: bool = False, precision=None, lowering: str = "auto",
                 kernel_init=None, bias_init=None, kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
                 bias_metadata: Mapping[str, Any] = MappingProxyType({}), rngs: nnx.Rngs):
        config = make_config(type(self).__name__, self.ndim, True, in_channels, out_channels, kernel_size, stride,
                             padding, dilation, groups, bias, padding_mode, output_padding)
        self._setup(config, _options(locals()), rngs)


class Conv1d(_ConvNd):
    ndim = 1


class Conv2d(_ConvNd):
    ndim = 2


class Conv3d(_ConvNd):
    ndim = 3


class ConvTranspose1d(_ConvTransposeNd):
    ndim = 1


class ConvTranspose2d(_ConvTransposeNd):
    ndim = 2


class ConvTranspose3d(_ConvTransposeNd):
    ndim = 3


_CLASSES = {c.__name__: c for c in (Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d)}


def from_torch(module: Any, **options) -> _ConvBase:
    """The jconv.nn equivalent of any torch.nn conv module (Conv1d ... ConvTranspose3d), parameters loaded."""
    name, _ = torch_module_arguments(module)
    return _CLASSES[name].from_torch(module, **options)


# Whole models (jconv.porting): a torch model's state_dict into an NNX tree named like it, and back.
load_state_dict = porting.load_state_dict
state_dict = porting.state_dict
IncompatibleKeys = porting.IncompatibleKeys
