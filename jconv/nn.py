"""Flax NNX modules that hold a convolution's parameters and call jconv's functional core.

    layer = jconv.nn.Conv2d(3, 16, 3, stride=2, padding=1, rngs=nnx.Rngs(0))
    y = layer(x)                                   # (N, 3, H, W) -> (N, 16, H', W')
    layer.load_state_dict(torch_layer.state_dict())
    layer = jconv.nn.from_torch(torch_layer)       # the same, building the module too

Parameters are `weight` and `bias` (nnx.Param) with PyTorch's shapes and initialisation; `bias=False` means no
bias parameter. `dtype` is the compute dtype (None: promote input and parameters), `param_dtype` the storage.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jconv.layers import LayerConfig, check_options, check_state_dict, make_config, torch_module_arguments


class _ConvBase(nnx.Module):
    """Parameter holding, state_dict and repr shared by the forward and transposed modules."""

    config: LayerConfig

    def _setup(self, config: LayerConfig, dtype, param_dtype, channels_last, precision, lowering, rngs):
        if not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"{config.name}: rngs must be an nnx.Rngs, but got {type(rngs).__name__}")
        options = check_options(config.name, dtype=dtype, param_dtype=param_dtype, channels_last=channels_last,
                                precision=precision, lowering=lowering)
        self.config = config
        self.dtype = options["dtype"]
        self.param_dtype = options["param_dtype"]
        self.channels_last = options["channels_last"]
        self.precision = options["precision"]
        self.lowering = options["lowering"]
        weight, bias = config.init(rngs.params(), self.param_dtype)
        self.weight = nnx.Param(weight)
        self.bias = nnx.Param(bias) if bias is not None else None

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


class _ConvNd(_ConvBase):
    ndim = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *, dtype=None,
                 param_dtype=jnp.float32, channels_last: bool = False, precision=None, lowering: str = "auto",
                 rngs: nnx.Rngs):
        config = make_config(type(self).__name__, self.ndim, False, in_channels, out_channels, kernel_size, stride,
                             padding, dilation, groups, bias, padding_mode)
        self._setup(config, dtype, param_dtype, channels_last, precision, lowering, rngs)


class _ConvTransposeNd(_ConvBase):
    ndim = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros", *, dtype=None,
                 param_dtype=jnp.float32, channels_last: bool = False, precision=None, lowering: str = "auto",
                 rngs: nnx.Rngs):
        config = make_config(type(self).__name__, self.ndim, True, in_channels, out_channels, kernel_size, stride,
                             padding, dilation, groups, bias, padding_mode, output_padding)
        self._setup(config, dtype, param_dtype, channels_last, precision, lowering, rngs)


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
