"""What the NNX and Linen modules share: PyTorch's constructor checks, initialisation, repr and state_dict rules.

The modules themselves (jconv.nn, jconv.linen) only hold parameters; the maths is jconv.functional. Nothing
here imports Flax.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from jconv import functional
from jconv.arrays import is_numeric, to_numpy
from jconv.spec import (
    SUPPORTED_DTYPES, check_lowering, check_output_padding, check_padding_amounts, check_padding_mode,
    check_precision, check_stride_and_dilation, int_tuple)


# jconv's own module arguments (beyond PyTorch's) and their defaults.
OPTION_DEFAULTS = {"dtype": None, "param_dtype": jnp.float32, "channels_last": False, "precision": None,
                   "lowering": "auto"}


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """A conv layer's hyper-parameters, validated and canonicalized as torch.nn.ConvNd does."""

    name: str  # "Conv2d", "ConvTranspose1d", ...
    ndim: int
    transposed: bool
    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Union[str, Tuple[int, ...]]
    dilation: Tuple[int, ...]
    groups: int
    bias: bool
    padding_mode: str
    output_padding: Tuple[int, ...]

    @property
    def weight_shape(self) -> Tuple[int, ...]:
        if self.transposed:
            return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def parameter_shapes(self) -> dict:
        """PyTorch's state_dict keys and shapes ("bias" only with one)."""
        shapes = {"weight": self.weight_shape}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    @property
    def fan_in(self) -> int:
        """torch.nn.init._calculate_fan_in_and_fan_out(weight)[0]: weight.size(1) * prod(kernel)."""
        return self.weight_shape[1] * math.prod(self.kernel_size)

    def init(self, key: jax.Array, param_dtype: Any, kernel_init=None, bias_init=None):
        """(weight, bias or None): PyTorch's reset_parameters, where kaiming_uniform_(a=sqrt(5)) is U(-b, b) with
        b = 1/sqrt(fan_in) and the bias is U(-b, b) with the same b; or the given initializers, Flax's
        init(key, shape, dtype), called with PyTorch's shapes."""
        w_key, b_key = jax.random.split(key)
        weight = (kernel_init or self.uniform)(w_key, self.weight_shape, param_dtype)
        bias = (bias_init or self.uniform)(b_key, (self.out_channels,), param_dtype) if self.bias else None
        return weight, bias

    def uniform(self, key: jax.Array, shape, dtype: Any) -> jax.Array:
        """U(-b, b), b = 1/sqrt(fan_in); for a complex dtype the real and imaginary parts are drawn independently
        from it, as torch's uniform_ does for complex parameters (nn.Conv2d(..., dtype=torch.cfloat))."""
        bound = 1.0 / math.sqrt(self.fan_in) if self.fan_in > 0 else 0.0
        dtype = jnp.dtype(dtype)
        if jnp.issubdtype(dtype, jnp.complexfloating):
            real_key, imag_key = jax.random.split(key)
            part = jnp.finfo(dtype).dtype  # complex64 -> float32
            return jax.lax.complex(jax.random.uniform(real_key, shape, part, -bound, bound),
                                   jax.random.uniform(imag_key, shape, part, -bound, bound))
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    def apply(self, x, weight, bias, *, output_size=None, dtype=None, channels_last=False, precision=None,
              lowering="auto"):
        """The layer's forward pass: cast to the compute dtype, then the functional call."""
        if dtype is None:  # as Flax: compute in the promoted dtype of input and parameters
            dtype = jnp.result_type(*(a for a in (x, weight, bias) if a is not None))
        x = jnp.asarray(x, dtype)
        weight = jnp.asarray(weight, dtype)
        bias = None if bias is None else jnp.asarray(bias, dtype)
        fn = getattr(functional, f"conv_transpose{self.ndim}d" if self.transposed else f"conv{self.ndim}d")
        common = dict(channels_last=channels_last, precision=precision, lowering=lowering)
        if self.transposed:
            return fn(x, weight, bias, self.stride, self.padding, self.output_padding, self.groups, self.dilation,
                      output_size=output_size, **common)
        if output_size is not None:
            raise TypeError(f"{self.name}: output_size is only accepted by transposed convolutions")
        return fn(x, weight, bias, self.stride, self.padding, self.dilation, self.groups,
                  padding_mode=self.padding_mode, **common)

    def module_repr(self, module: Any) -> str:
        """`Conv2d(3, 16, kernel_size=(3, 3), ...)`, as PyTorch prints the module, then jconv's non-defaults."""
        return f"{self.name}({self.extra_repr(**{key: getattr(module, key) for key in OPTION_DEFAULTS})})"

    def extra_repr(self, **jconv_options) -> str:
        """PyTorch's extra_repr (only non-default arguments beyond the first four), then jconv's non-defaults."""
        n = self.ndim
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0,) * n:
            s += f", padding={self.padding}"  # torch prints padding=same, unquoted
        if self.dilation != (1,) * n:
            s += f", dilation={self.dilation}"
        if self.output_padding != (0,) * n:
            s += f", output_padding={self.output_padding}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if not self.bias:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode}"
        for key, value in jconv_options.items():
            default = OPTION_DEFAULTS.get(key)
            if key in OPTION_DEFAULTS and value is not default and value != default:
                shown = jnp.dtype(value).name if key.endswith("dtype") and value is not None else repr(value)
                s += f", {key}={shown}"
        return s


def make_config(name: str, ndim: int, transposed: bool, in_channels, out_channels, kernel_size, stride=1,
                padding=0, dilation=1, groups=1, bias=True, padding_mode="zeros", output_padding=0) -> LayerConfig:
    """Validate a layer's arguments eagerly, with PyTorch's rules and messages (prefixed by the class name)."""
    for arg, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name}: {arg} must be an int, but got {value!r}")
    if groups <= 0:
        raise ValueError(f"{name}: groups must be a positive integer, but got groups={groups}")
    if in_channels < 0 or out_channels < 0:
        raise ValueError(f"{name}: channel counts must be non-negative, but got {in_channels}, {out_channels}")
    if in_channels % groups != 0:
        raise ValueError(f"{name}: in_channels must be divisible by groups, but got in_channels={in_channels}, "
                         f"groups={groups}")
    if out_channels % groups != 0:
        raise ValueError(f"{name}: out_channels must be divisible by groups, but got out_channels={out_channels}, "
                         f"groups={groups}")
    kernel = int_tuple(name, "kernel_size", kernel_size, ndim)
    if any(k <= 0 for k in kernel):
        raise ValueError(f"{name}: kernel_size must be positive, but got kernel_size={kernel}")
    stride_t, dilation_t = check_stride_and_dilation(name, stride, dilation, ndim)
    padding_mode = check_padding_mode(name, padding_mode, transposed)
    if isinstance(padding, str):
        # nn.ConvNd's own message (F.conv2d's differs; spec has that one).
        if transposed:
            raise ValueError(f"{name}: padding must be an int or a tuple of ints, but got padding={padding!r}")
        if padding not in ("same", "valid"):
            raise ValueError(f"{name}: Invalid padding string {padding!r}, should be one of ['same', 'valid']")
        if padding == "same" and any(s != 1 for s in stride_t):
            raise ValueError(f"{name}: padding='same' is not supported for strided convolutions")
        padding_t = padding
    else:
        padding_t = check_padding_amounts(name, padding, ndim)
    output_padding_t = int_tuple(name, "output_padding", output_padding, ndim)
    if transposed:
        check_output_padding(name, output_padding_t, stride_t, dilation_t)
    elif any(output_padding_t):
        raise ValueError(f"{name}: output_padding is only accepted by transposed convolutions")
    if not isinstance(bias, (bool, np.bool_)):
        raise TypeError(f"{name}: bias must be a bool, but got {bias!r}")
    return LayerConfig(name, ndim, transposed, int(in_channels), int(out_channels), kernel, stride_t, padding_t,
                       dilation_t, int(groups), bool(bias), padding_mode, output_padding_t)


def canonical_dtype(name: str, arg: str, value: Any, *, allow_none: bool) -> Any:
    """A module's dtype argument as a NumPy dtype (torch dtypes such as torch.float16 included), checked now:
    a bad one would otherwise fail at the first call, or in repr."""
    if value is None and allow_none:
        return None
    if value is None:  # jnp.dtype(None) would be float64
        raise TypeError(f"{name}: {arg} must be a floating-point or complex dtype, but got None")
    text = str(value)
    if text.startswith("torch."):  # torch.float16 -> "float16", without importing torch
        value = text[len("torch."):]
    try:
        dtype = jnp.dtype(value)
    except TypeError as e:
        raise TypeError(f"{name}: {arg} must be a floating-point or complex dtype{' or None' if allow_none else ''}, "
                        f"but got {value!r}") from e
    if not any(dtype == jnp.dtype(d) for d in SUPPORTED_DTYPES):
        raise TypeError(f"{name}: {arg} must be one of {', '.join(jnp.dtype(d).name for d in SUPPORTED_DTYPES)}, "
                        f"but got {dtype.name}")
    return dtype


def check_options(name: str, *, dtype, param_dtype, channels_last, precision, lowering) -> dict:
    """jconv's own module arguments, validated eagerly (the constructor raises, not the first call) and made
    canonical: the same checks and messages as the functional API's, prefixed by the class name."""
    if not isinstance(channels_last, (bool, np.bool_)):
        raise TypeError(f"{name}: channels_last must be a bool, but got {channels_last!r}")
    return dict(dtype=canonical_dtype(name, "dtype", dtype, allow_none=True),
                param_dtype=canonical_dtype(name, "param_dtype", param_dtype, allow_none=False),
                channels_last=bool(channels_last), precision=check_precision(name, precision),
                lowering=check_lowering(name, lowering))


def check_initializers(name: str, **initializers) -> None:
    """kernel_init / bias_init: None (PyTorch's initialisation) or Flax's init(key, shape, dtype)."""
    for arg, init in initializers.items():
        if init is not None and not callable(init):
            raise TypeError(f"{name}: {arg} must be None or an initializer init(key, shape, dtype), but got "
                            f"{init!r} ({type(init).__name__})")


# --- state_dict interop, shared by the modules ----------------------------------------------------------------


def check_state_dict(name: str, mapping: Mapping[str, Any], expected: Mapping[str, Tuple[int, ...]],
                     strict: bool, param_dtype: Any) -> dict:
    """Keys and shapes as torch's load_state_dict checks them; returns {key: np.ndarray} for known keys."""
    check_mapping(name, mapping)
    missing = [k for k in expected if k not in mapping]
    unexpected = [k for k in mapping if k not in expected]
    if strict and (missing or unexpected):
        raise KeyError(incompatible_keys_message(name, missing, unexpected))
    return {key: checked_array(name, key, mapping[key], shape, param_dtype)
            for key, shape in expected.items() if key in mapping}


def check_mapping(name: str, mapping: Any) -> None:
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{name}.load_state_dict: expected a mapping of names to arrays, but got "
                        f"{type(mapping).__name__}")


def incompatible_keys_message(name: str, missing, unexpected) -> str:
    """torch's wording for a strict load's missing and unexpected keys."""
    parts = []
    if missing:
        parts.append("Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in missing) + ".")
    if unexpected:
        parts.append("Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in unexpected) + ".")
    return f"Error(s) in loading state_dict for {name}: " + " ".join(parts)


def checked_array(name: str, key: str, value: Any, shape: Tuple[int, ...], param_dtype: Any) -> np.ndarray:
    """`value` for parameter `key` as a NumPy array, refused unless numeric, of `shape`, and castable to
    param_dtype without dropping an imaginary part (torch only warns)."""
    array = to_numpy(value)
    if not is_numeric(array):
        raise TypeError(f"Error(s) in loading state_dict for {name}: {key} must be a numeric array or tensor, but "
                        f"got {type(value).__name__} (dtype {array.dtype})")
    if tuple(array.shape) != tuple(shape):
        raise ValueError(
            f"Error(s) in loading state_dict for {name}: size mismatch for {key}: copying a param with shape "
            f"{tuple(array.shape)} from checkpoint, the shape in current model is {tuple(shape)}.")
    if np.iscomplexobj(array) and not jnp.issubdtype(param_dtype, jnp.complexfloating):
        raise TypeError(
            f"{name}.load_state_dict: {key} is {array.dtype.name}, but the module's param_dtype is "
            f"{jnp.dtype(param_dtype).name}, which would drop its imaginary part; build the module with a complex "
            f"param_dtype (e.g. param_dtype=jnp.complex64)")
    return array


TORCH_CLASSES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d")


def torch_module_arguments(module: Any) -> Tuple[str, dict]:
    """(class name, constructor arguments) of a torch.nn conv module, read from its attributes; param_dtype is its
    weight's dtype (float64 and complex128 as JAX holds them: 32-bit without jax_enable_x64)."""
    cls = type(module).__name__
    if cls not in TORCH_CLASSES:
        raise TypeError(f"from_torch: expected one of torch.nn.{', '.join(TORCH_CLASSES)}, but got {cls}")
    args = dict(in_channels=module.in_channels, out_channels=module.out_channels, kernel_size=tuple(module.kernel_size),
                stride=tuple(module.stride), padding=module.padding if isinstance(module.padding, str)
                else tuple(module.padding), dilation=tuple(module.dilation), groups=module.groups,
                bias=module.bias is not None, padding_mode=module.padding_mode)
    if cls.startswith("ConvTranspose"):
        args["output_padding"] = tuple(module.output_padding)
    args["param_dtype"] = jax.dtypes.canonicalize_dtype(canonical_dtype(cls, "weight dtype", module.weight.dtype,
                                                                        allow_none=False))
    return cls, args
