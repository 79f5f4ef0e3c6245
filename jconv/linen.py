"""The same six modules for flax.linen, for codebases not yet on NNX.

    layer = jconv.linen.Conv2d(3, 16, 3, stride=2, padding=1)
    params = layer.init(key, x)["params"]          # {"weight": (16, 3, 3, 3), "bias": (16,)}
    y = layer.apply({"params": params}, x)
    params = jconv.linen.params_from_state_dict(layer, torch_layer.state_dict())
    variables, _ = jconv.linen.load_state_dict(model_variables, torch_model.state_dict())   # a whole model

Same parameter names, shapes and initialisation as PyTorch; the maths is jconv.functional, shared with jconv.nn,
so both give bit-identical outputs for the same parameters.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp
from flax import linen

from jconv import porting
from jconv.layers import (
    LayerConfig, check_initializers, check_options, check_state_dict, make_config, torch_module_arguments)


class _ConvBase(linen.Module):
    transposed = False

    @linen.nowrap
    def _config(self) -> LayerConfig:
        return make_config(type(self).__name__, self.ndim, self.transposed, self.in_channels, self.out_channels,
                           self.kernel_size, self.stride, self.padding, self.dilation, self.groups, self.bias,
                           self.padding_mode, getattr(self, "output_padding", 0))

    def __post_init__(self):
        self._config()  # validate eagerly, with PyTorch's rules
        check_initializers(type(self).__name__, kernel_init=self.kernel_init, bias_init=self.bias_init)
        options = check_options(type(self).__name__, dtype=self.dtype, param_dtype=self.param_dtype,
                                channels_last=self.channels_last, precision=self.precision, lowering=self.lowering)
        for field, value in options.items():  # canonical values (torch dtypes become NumPy ones)
            object.__setattr__(self, field, value)
        super().__post_init__()

    @linen.compact
    def __call__(self, x, output_size=None):
        """The convolution of x (output_size: transposed modules only, as in PyTorch)."""
        config = self._config()
        # PyTorch's initialisation unless given Flax initializers (called with PyTorch's shapes).
        weight = self.param("weight", self.kernel_init or config.uniform, config.weight_shape, self.param_dtype)
        bias = self.param("bias", self.bias_init or config.uniform, (config.out_channels,), self.param_dtype) \
            if config.bias else None
        return config.apply(x, weight, bias, output_size=output_size, dtype=self.dtype,
                            channels_last=self.channels_last, precision=self.precision, lowering=self.lowering)

    def __repr__(self) -> str:
        return self._config().module_repr(self)


class _ConvNd(_ConvBase):
    in_channels: int
    out_channels: int
    kernel_size: Any
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    channels_last: bool = False
    precision: Any = None
    lowering: str = "auto"
    kernel_init: Any = None
    bias_init: Any = None


class _ConvTransposeNd(_ConvBase):
    transposed = True
    in_channels: int
    out_channels: int
    kernel_size: Any
    stride: Any = 1
    padding: Any = 0
    output_padding: Any = 0
    groups: int = 1
    bias: bool = True
    dilation: Any = 1
    padding_mode: str = "zeros"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    channels_last: bool = False
    precision: Any = None
    lowering: str = "auto"
    kernel_init: Any = None
    bias_init: Any = None


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


def params_from_state_dict(module: _ConvBase, state_dict: Mapping[str, Any], strict: bool = True) -> dict:
    """A PyTorch state_dict as this module's params {"weight", "bias"}, checked like torch's load_state_dict."""
    config = module._config()
    arrays = check_state_dict(config.name, state_dict, config.parameter_shapes, strict, module.param_dtype)
    return {k: jnp.asarray(v, module.param_dtype) for k, v in arrays.items()}


def from_torch(module: Any, **options):
    """(jconv.linen module, params) equivalent to a torch.nn conv module."""
    name, args = torch_module_arguments(module)
    layer = _CLASSES[name](**{**args, **options})  # the caller's options override (param_dtype)
    return layer, params_from_state_dict(layer, module.state_dict())


# Whole variable trees (jconv.porting): a torch model's state_dict into Linen variables named like it, and back.
load_state_dict = porting.linen_load_state_dict
state_dict = porting.linen_state_dict
IncompatibleKeys = porting.IncompatibleKeys
