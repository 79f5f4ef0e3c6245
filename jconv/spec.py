"""ConvSpec: every argument of a jconv call, canonicalized and validated once.

All of PyTorch's argument checks live here and run at trace time, on shapes and dtypes only. The result is a
frozen, hashable dataclass: jit caches on it, every lowering reads from it, and nothing downstream re-parses
user arguments. Error messages follow PyTorch's wording (so ported tests that match on them keep working),
prefixed with the op name; bad types raise TypeError, bad values ValueError.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jconv import lowerings

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
# torch.nn.functional's floating-point and complex conv dtypes (its integer convs on CPU are not supported).
SUPPORTED_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64, jnp.complex64, jnp.complex128)

IntOrTuple = Union[int, Sequence[int]]
Pads = Tuple[Tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """A fully explicit description of one convolution call.

    Shapes are in PyTorch terms: `batch`, `in_channels`, `in_spatial` describe the (batched) input before any
    padding; `padding` holds (lo, hi) amounts per spatial axis (for transposed convs, PyTorch's symmetric `p`
    that is cropped from the full output). `padding_mode` says how non-zero modes fill those pads.
    """

    op: str
    ndim: int
    transposed: bool
    batched: bool
    channels_last: bool
    batch: int
    in_channels: int
    out_channels: int
    in_spatial: Tuple[int, ...]
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Pads
    dilation: Tuple[int, ...]
    output_padding: Tuple[int, ...]
    groups: int
    padding_mode: str
    dtype: Any  # np.dtype of input, weight and bias (they must agree)
    has_bias: bool
    precision: Any
    preferred_element_type: Any
    lowering: str
    # Roles ("batch", "channel", "spatial") of input axes sharded over an Explicit mesh axis: part of the
    # input's type there, and lowerings that pad, slice or reshape such axes cannot type-check.
    explicit_sharding: Tuple[str, ...] = ()
    # The platform ("cpu", "gpu", "tpu") the convolution is lowered for: jconv.dispatch.lower traces one branch
    # per platform with it set. None: JAX's default backend. Lowerings read it through common.target_platform.
    platform: Optional[str] = None
    # The named variant of the lowering (its module's variants(spec)); None: the one its rule picks.
    variant: Optional[str] = None

    # --- derived quantities -------------------------------------------------------------------------

    @property
    def out_spatial(self) -> Tuple[int, ...]:
        if self.transposed:
            return tuple(
                (i - 1) * s - lo - hi + d * (k - 1) + op + 1
                for i, s, (lo, hi), d, k, op in zip(
                    self.in_spatial, self.stride, self.padding, self.dilation, self.kernel_size,
                    self.output_padding)
            )
        return tuple(
            (i + lo + hi - d * (k - 1) - 1) // s + 1
            for i, (lo, hi), d, k, s in zip(
                self.in_spatial, self.padding, self.dilation, self.kernel_size, self.stride)
        )

    @property
    def out_channels_effective(self) -> int:
        # PyTorch returns an output with zero channels for an input with zero channels, whatever the weight.
        return 0 if self.in_channels == 0 else self.out_channels

    @property
    def out_shape(self) -> Tuple[int, ...]:
        """Output shape as the user sees it (layout and batching applied)."""
        c = self.out_channels_effective
        spatial = self.out_spatial
        shape = (*spatial, c) if self.channels_last else (c, *spatial)
        return (self.batch, *shape) if self.batched else shape

    @property
    def is_empty(self) -> bool:
        return self.batch == 0 or self.in_channels == 0

    @property
    def lowering_padding(self) -> Pads:
        """Zero padding a lowering must apply itself: non-zero modes are padded explicitly beforehand."""
        if self.padding_mode == "zeros" or self.transposed:
            return self.padding
        return ((0, 0),) * self.ndim

    @property
    def lowering_in_spatial(self) -> Tuple[int, ...]:
        """Spatial size of the array a lowering receives (after mode padding, before zero padding)."""
        if self.padding_mode == "zeros" or self.transposed:
            return self.in_spatial
        return tuple(i + lo + hi for i, (lo, hi) in zip(self.in_spatial, self.padding))

    @property
    def is_depthwise(self) -> bool:
        """Every input channel is its own group (groups == in_channels, one channel included), with any channel
        multiplier: the convs the tap-sum lowerings take."""
        return self.in_per_group == 1

    @property
    def channel_multiplier(self) -> int:
        """Output channels per input channel of a depthwise conv."""
        return self.out_channels // self.in_channels

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def weight_shape(self) -> Tuple[int, ...]:
        if self.transposed:
            return (self.in_channels, self.out_per_group, *self.kernel_size)
        return (self.out_channels, self.in_per_group, *self.kernel_size)

    def describe(self) -> str:
        """One line naming the convolution, used by explain() and benchmarks."""
        layout = "channels_last" if self.channels_last else "channels_first"
        parts = [
            f"{self.op}", f"N={self.batch}", f"C={self.in_channels}->{self.out_channels}",
            f"spatial={self.in_spatial}", f"k={self.kernel_size}", f"s={self.stride}",
            f"pad={self.padding}", f"d={self.dilation}", f"g={self.groups}",
            f"mode={self.padding_mode}", f"dtype={np.dtype(self.dtype).name}", layout,
        ]
        if self.transposed:
            parts.insert(8, f"out_pad={self.output_padding}")
        return " ".join(parts)


# --- canonicalization helpers ---------------------------------------------------------------------------


def _fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def _as_int(op: str, name: str, value: Any) -> int:
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{op}: {name} must be a static Python int (it fixes the output's shape), but got a traced value "
            f"{value!r}. Pass it as a Python int, or mark it static: jax.jit(f, static_argnames=...)")
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int or a tuple of ints, but got {value!r} (bool)")
    try:
        return operator.index(value)
    except TypeError as e:
        raise TypeError(
            f"{op}: {name} must be an int or a tuple of ints, but got {value!r} ({type(value).__name__})"
        ) from e


def int_tuple(op: str, name: str, value: IntOrTuple, n: int) -> Tuple[int, ...]:
    """An int or a length-1/length-n sequence of ints, expanded to an n-tuple (PyTorch's expand_param_if_needed)."""
    if isinstance(value, (list, tuple)):
        items = tuple(_as_int(op, name, v) for v in value)
        if len(items) == 1:
            return items * n
        if len(items) != n:
            raise ValueError(
                f"{op}: expected {name} to be a single integer value or a list of {n} values to match the "
                f"convolution dimensions, but got {name}={list(items)}"
            )
        return items
    if isinstance(value, np.ndarray) and value.ndim == 1:
        return int_tuple(op, name, value.tolist(), n)
    return (_as_int(op, name, value),) * n


def _check_dtype(op: str, name: str, dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if not any(dtype == np.dtype(d) for d in SUPPORTED_DTYPES):
        raise TypeError(
            f"{op}: {name} dtype must be one of {', '.join(np.dtype(d).name for d in SUPPORTED_DTYPES)}, but got "
            f"{dtype.name}"
        )
    return dtype


def check_lowering(op: str, lowering: Any) -> str:
    """'auto', 'autotune', a lowering's name, or 'name:variant' (which variants a spec allows is checked when
    the lowering is selected: they depend on the convolution)."""
    if not isinstance(lowering, str):
        raise TypeError(f"{op}: lowering must be a string, but got {lowering!r} ({type(lowering).__name__})")
    choices = ("auto", "autotune") + lowerings.NAMES
    name, colon, variant = lowering.partition(":")
    if name not in choices or (colon and (name in ("auto", "autotune") or not variant)):
        raise ValueError(f"{op}: unknown lowering={lowering!r}; expected one of {list(choices)}, or "
                         "'<lowering>:<variant>' with a variant jconv.explain lists")
    return lowering


def check_precision(op: str, precision: Any) -> Any:
    """lax's precision forms (None, a Precision or its name, a pair, a DotAlgorithm[Preset]), made hashable."""
    algorithm_types = tuple(t for t in (getattr(lax, "DotAlgorithm", None), getattr(lax, "DotAlgorithmPreset", None))
                            if t is not None)

    def one(p):
        if isinstance(p, lax.Precision):
            return p
        if isinstance(p, str):
            try:
                return lax.Precision(p)
            except ValueError:
                preset = getattr(lax, "DotAlgorithmPreset", None)
                if preset is not None and p in preset.__members__:
                    return preset[p]
        raise ValueError(
            f"{op}: precision must be None, 'default'/'high'/'highest', a lax.Precision, a pair of those, or a "
            f"lax.DotAlgorithmPreset, but got precision={precision!r}"
        )

    if precision is None or (algorithm_types and isinstance(precision, algorithm_types)):
        return precision
    if isinstance(precision, (list, tuple)):
        if len(precision) != 2:
            one(object())  # raises with the message above
        return tuple(one(p) for p in precision)
    return one(precision)


def _resolve_conv_padding(op: str, padding: Any, n: int, kernel_size, dilation, stride) -> Pads:
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"{op}: padding='same' is not supported for strided convolutions")
            pads = []
            for k, d in zip(kernel_size, dilation):
                total = d * (k - 1)
                lo = total // 2
                pads.append((lo, total - lo))
            return tuple(pads)
        raise ValueError(f"{op}: Invalid padding string: {padding!r}; expected 'valid', 'same', an int or a tuple")
    return tuple((p, p) for p in check_padding_amounts(op, padding, n))


# --- checks shared with the modules' constructors (jconv.layers) --------------------------------------------


def check_stride_and_dilation(op: str, stride: IntOrTuple, dilation: IntOrTuple, n: int) -> Tuple[Tuple[int, ...], ...]:
    stride_t = int_tuple(op, "stride", stride, n)
    dilation_t = int_tuple(op, "dilation", dilation, n)
    if any(s <= 0 for s in stride_t):
        raise ValueError(f"{op}: non-positive stride is not supported, but got stride={stride_t}")
    if any(d <= 0 for d in dilation_t):
        raise ValueError(f"{op}: non-positive dilation is not supported, but got dilation={dilation_t}")
    return stride_t, dilation_t


def check_padding_mode(op: str, padding_mode: Any, transposed: bool) -> str:
    if not isinstance(padding_mode, str):
        raise TypeError(f"{op}: padding_mode must be a string, but got {padding_mode!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(
            f"{op}: padding_mode must be one of {list(PADDING_MODES)}, but got padding_mode={padding_mode!r}"
        )
    if transposed and padding_mode != "zeros":
        raise ValueError(f'{op}: Only "zeros" padding mode is supported for {op}, but got {padding_mode!r}')
    return padding_mode


def check_padding_amounts(op: str, padding: IntOrTuple, n: int) -> Tuple[int, ...]:
    amounts = int_tuple(op, "padding", padding, n)
    if any(p < 0 for p in amounts):
        raise ValueError(f"{op}: negative padding is not supported, but got padding={amounts}")
    return amounts


def _check_explicit_pads(op: str, pads: Any, n: int) -> Pads:
    pairs = tuple((int(lo), int(hi)) for lo, hi in pads)
    if len(pairs) != n or any(p < 0 for pair in pairs for p in pair):
        raise ValueError(f"{op}: expected {n} (low, high) pairs of non-negative padding, but got {pads!r}")
    return pairs


def check_output_padding(op: str, output_padding: Tuple[int, ...], stride: Tuple[int, ...],
                         dilation: Tuple[int, ...]) -> Tuple[int, ...]:
    if any(p < 0 for p in output_padding):
        raise ValueError(f"{op}: negative output_padding is not supported, but got {output_padding}")
    if any(p >= s and p >= d for p, s, d in zip(output_padding, stride, dilation)):
        raise ValueError(
            f"{op}: output padding must be smaller than either stride or dilation, but got "
            f"output_padding={output_padding}, stride={stride}, dilation={dilation}"
        )
    return output_padding


# --- the one constructor ----------------------------------------------------------------------------------


class _InputLayout(NamedTuple):
    batched: bool
    batched_shape: Tuple[int, ...]  # the input's shape with a batch axis
    batch: int
    in_channels: int
    in_spatial: Tuple[int, ...]


def make_spec(
    op: str,
    ndim: int,
    transposed: bool,
    input_shape: Tuple[int, ...],
    input_dtype: Any,
    weight_shape: Tuple[int, ...],
    weight_dtype: Any,
    bias_shape: Optional[Tuple[int, ...]],
    bias_dtype: Any,
    *,
    stride: IntOrTuple = 1,
    padding: Any = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    output_padding: IntOrTuple = 0,
    output_size: Optional[Sequence[int]] = None,
    channels_last: bool = False,
    precision: Any = None,
    preferred_element_type: Any = None,
    lowering: str = "auto",
    explicitly_sharded_axes: Tuple[int, ...] = (),
    explicit_pads: Optional[Pads] = None,
) -> ConvSpec:
    """Validate a convolution call exactly as PyTorch does and return its canonical ConvSpec.

    `explicit_pads`, (lo, hi) non-negative amounts per spatial axis, replaces `padding` for a forward conv: lax's
    asymmetric form, which torch's functions do not take (jconv.conv_general_dilated passes it)."""
    n = ndim
    input_shape = tuple(int(s) for s in input_shape)
    weight_shape = tuple(int(s) for s in weight_shape)
    layout = _input_layout(op, n, transposed, input_shape, weight_shape, channels_last)
    dtype, preferred_element_type = _check_dtypes(
        op, input_dtype, weight_dtype, bias_shape, bias_dtype, preferred_element_type)
    stride_t, dilation_t = check_stride_and_dilation(op, stride, dilation, n)
    groups = _as_int(op, "groups", groups)
    if groups <= 0:
        raise ValueError(f"{op}: non-positive groups is not supported, but got groups={groups}")
    padding_mode = check_padding_mode(op, padding_mode, transposed=False)
    lowering = check_lowering(op, lowering)
    precision = check_precision(op, precision)
    kernel_size = weight_shape[2:]
    out_channels = _check_weight_and_bias(op, transposed, weight_shape, bias_shape, groups, layout, channels_last)
    # Only batch and channels may be empty (PyTorch's rule).
    if any(s == 0 for s in layout.in_spatial):
        raise ValueError(
            f"{op}: Only zero batch or zero channel inputs are supported, but got input shape: "
            f"{_fmt_shape(layout.batched_shape)}"
        )
    if transposed:
        pads, output_padding_t = _transposed_padding(op, padding, padding_mode, output_padding, output_size, layout,
                                                     stride_t, dilation_t, kernel_size)
    else:
        if output_size is not None:
            raise TypeError(f"{op}: output_size is only accepted by transposed convolutions")
        pads = _resolve_conv_padding(op, padding, n, kernel_size, dilation_t, stride_t) if explicit_pads is None \
            else _check_explicit_pads(op, explicit_pads, n)
        output_padding_t = (0,) * n
        _check_mode_padding(op, padding_mode, pads, layout.in_spatial, layout.batched_shape, channels_last)
    spec = ConvSpec(
        explicit_sharding=_sharding_roles(explicitly_sharded_axes, n, layout.batched, channels_last),
        op=op, ndim=n, transposed=transposed, batched=layout.batched, channels_last=channels_last,
        batch=layout.batch, in_channels=layout.in_channels, out_channels=out_channels,
        in_spatial=tuple(layout.in_spatial), kernel_size=tuple(kernel_size), stride=stride_t, padding=pads,
        dilation=dilation_t, output_padding=output_padding_t, groups=groups, padding_mode=padding_mode, dtype=dtype,
        has_bias=bias_shape is not None, precision=precision, preferred_element_type=preferred_element_type,
        lowering=lowering.partition(":")[0], variant=lowering.partition(":")[2] or None,
    )
    _check_output_not_empty(spec)
    return spec


def _input_layout(op, n, transposed, input_shape, weight_shape, channels_last) -> _InputLayout:
    """Ranks of input and weight, and where batch, channels and spatial axes are in the input."""
    if len(input_shape) not in (n + 1, n + 2):
        raise ValueError(
            f"Expected {n + 1}D (unbatched) or {n + 2}D (batched) input to {op}, but got input of size: "
            f"{_fmt_shape(input_shape)}"
        )
    if len(weight_shape) != n + 2:
        layout = "(in_channels, out_channels/groups, *kernel_size)" if transposed else \
            "(out_channels, in_channels/groups, *kernel_size)"
        raise ValueError(
            f"{op}: expected weight to be {n + 2}-D {layout}, but got weight of size {_fmt_shape(weight_shape)}"
        )
    if not isinstance(channels_last, (bool, np.bool_)):
        raise TypeError(f"{op}: channels_last must be a bool, but got {channels_last!r}")
    batched = len(input_shape) == n + 2
    batched_shape = input_shape if batched else (1, *input_shape)
    if channels_last:
        return _InputLayout(batched, batched_shape, batched_shape[0], batched_shape[-1], batched_shape[1:-1])
    return _InputLayout(batched, batched_shape, batched_shape[0], batched_shape[1], batched_shape[2:])


def _check_dtypes(op, input_dtype, weight_dtype, bias_shape, bias_dtype, preferred_element_type):
    """Input, weight and bias must agree, as in PyTorch; returns (their dtype, preferred_element_type)."""
    in_dt = _check_dtype(op, "input", input_dtype)
    w_dt = _check_dtype(op, "weight", weight_dtype)
    if in_dt != w_dt:
        raise TypeError(f"{op}: Input type ({in_dt.name}) and weight type ({w_dt.name}) should be the same")
    if bias_shape is not None:
        b_dt = _check_dtype(op, "bias", bias_dtype)
        if b_dt != in_dt:
            raise TypeError(f"{op}: Input type ({in_dt.name}) and bias type ({b_dt.name}) should be the same")
    if preferred_element_type is None:
        return in_dt, None
    preferred = _check_dtype(op, "preferred_element_type", preferred_element_type)
    complex_input = jnp.issubdtype(in_dt, jnp.complexfloating)
    if jnp.issubdtype(preferred, jnp.complexfloating) != complex_input:
        raise TypeError(f"{op}: preferred_element_type={preferred.name} for a {in_dt.name} input: "
                        f"expected a {'complex' if complex_input else 'real'} dtype")
    if preferred.itemsize < in_dt.itemsize:
        # lax refuses a narrowing accumulation type; every lowering refuses it here, so a call behaves the same
        # whichever lowering (and so whichever device) runs it.
        raise TypeError(f"{op}: preferred_element_type={preferred.name} is narrower than the {in_dt.name} input; "
                        "expected a dtype at least as wide (or None), as lax.conv_general_dilated requires. Cast "
                        "the output instead.")
    return in_dt, preferred


def _check_weight_and_bias(op, transposed, weight_shape, bias_shape, groups, layout, channels_last) -> int:
    """The weight against groups and the input's channels, the bias against the weight; returns out_channels."""
    w_dim0 = weight_shape[0]
    if w_dim0 < groups:
        raise ValueError(
            f"{op}: Given groups={groups}, expected weight to be at least {groups} at dimension 0, but got "
            f"weight of size {_fmt_shape(weight_shape)} instead"
        )
    if w_dim0 % groups != 0:
        raise ValueError(
            f"{op}: Given groups={groups}, expected weight to be divisible by {groups} at dimension 0, but got "
            f"weight of size {_fmt_shape(weight_shape)} instead"
        )
    shape = layout.batched_shape
    full_in_shape = _fmt_shape(shape if not channels_last else (shape[0], shape[-1], *shape[1:-1]))
    if transposed:
        expected_in = w_dim0
        out_channels = weight_shape[1] * groups
        prefix = f"Given transposed=1, weight of size {_fmt_shape(weight_shape)}"
    else:
        expected_in = weight_shape[1] * groups
        out_channels = w_dim0
        prefix = f"Given groups={groups}, weight of size {_fmt_shape(weight_shape)}"
    if layout.in_channels != expected_in:
        raise ValueError(
            f"{op}: {prefix}, expected input{full_in_shape} to have {expected_in} channels, but got "
            f"{layout.in_channels} channels instead"
        )
    if transposed and out_channels == 0:
        # torch.nn.functional raises for it too (a oneDNN error on CPU); refused here, for every lowering alike.
        raise ValueError(
            f"{op}: weight of size {_fmt_shape(weight_shape)} gives zero output channels; expected "
            "weight.shape[1] (out_channels / groups) >= 1"
        )
    if bias_shape is not None and (len(bias_shape) != 1 or bias_shape[0] != out_channels):
        who = "Given transposed=1, weight" if transposed else "Given weight"
        raise ValueError(
            f"{op}: {who} of size {_fmt_shape(weight_shape)}, expected bias to be 1-dimensional with "
            f"{out_channels} elements, but got bias of size {_fmt_shape(bias_shape)} instead"
        )
    if any(k <= 0 for k in weight_shape[2:]):
        raise ValueError(f"{op}: kernel size must be positive, but got weight of size {_fmt_shape(weight_shape)}")
    return out_channels


def _transposed_padding(op, padding, padding_mode, output_padding, output_size, layout, stride, dilation,
                        kernel_size) -> Tuple[Pads, Tuple[int, ...]]:
    """A transposed conv's (lo, hi) pads and output_padding (from output_size where given)."""
    if isinstance(padding, str):
        raise TypeError(f"{op}: argument 'padding' must be an int or a tuple of ints, not str ({padding!r})")
    check_padding_mode(op, padding_mode, transposed=True)
    n = len(stride)
    amounts = check_padding_amounts(op, padding, n)
    if output_size is not None:
        output_padding_t = _output_padding_from_size(
            op, output_size, layout.batched, n, layout.in_spatial, stride, amounts, dilation, kernel_size)
    else:
        output_padding_t = int_tuple(op, "output_padding", output_padding, n)
    return tuple((p, p) for p in amounts), check_output_padding(op, output_padding_t, stride, dilation)


def _sharding_roles(explicitly_sharded_axes, n, batched, channels_last) -> Tuple[str, ...]:
    """The roles ("batch", "channel", "spatial") of the input axes sharded over an Explicit mesh axis."""
    roles = set()
    channel = n + 1 if channels_last else 1
    for axis in explicitly_sharded_axes:
        axis = axis + (0 if batched else 1)  # index in the batched shape
        roles.add("batch" if axis == 0 else "channel" if axis == channel else "spatial")
    return tuple(sorted(roles))


def _check_output_not_empty(spec: ConvSpec) -> None:
    op = spec.op
    if spec.transposed:
        if any(o <= 0 for o in spec.out_spatial):
            raise ValueError(
                f"{op}: Given input size per channel: ({' x '.join(map(str, spec.in_spatial))}). Calculated output "
                f"size per channel: ({' x '.join(map(str, spec.out_spatial))}). Output size is too small"
            )
        return
    padded = tuple(i + lo + hi for i, (lo, hi) in zip(spec.in_spatial, spec.padding))
    dilated_kernel = tuple(d * (k - 1) + 1 for d, k in zip(spec.dilation, spec.kernel_size))
    if any(p < k for p, k in zip(padded, dilated_kernel)):
        raise ValueError(
            f"{op}: Calculated padded input size per channel: ({' x '.join(map(str, padded))}). "
            f"Kernel size: ({' x '.join(map(str, dilated_kernel))}). "
            f"Kernel size can't be greater than actual input size"
        )


def _check_mode_padding(op, padding_mode, pads, in_spatial, batched_shape, channels_last) -> None:
    """F.pad's limits for the non-zero modes: reflect needs pad < size, circular pad <= size."""
    if padding_mode == "reflect":
        for axis, (i, (lo, hi)) in enumerate(zip(in_spatial, pads)):
            if lo >= i or hi >= i:
                raise ValueError(
                    f"{op}: padding_mode='reflect': Padding size should be less than the corresponding input "
                    f"dimension, but got: padding ({lo}, {hi}) at spatial dimension {axis} of size {i} "
                    f"(input {_fmt_shape(batched_shape)})"
                )
    elif padding_mode == "circular":
        for axis, (i, (lo, hi)) in enumerate(zip(in_spatial, pads)):
            if lo > i or hi > i:
                raise ValueError(
                    f"{op}: padding_mode='circular': Padding value causes wrapping around more than once: "
                    f"padding ({lo}, {hi}) at spatial dimension {axis} of size {i}"
                )


def _output_padding_from_size(op, output_size, batched, n, in_spatial, stride, padding, dilation, kernel_size):
    """PyTorch's ConvTranspose._output_padding: turn a requested output_size into output_padding."""
    if not isinstance(output_size, (list, tuple, np.ndarray)):
        raise TypeError(
            f"{op}: output_size must be a list or tuple of ints ({n} spatial sizes, or the full output shape), "
            f"but got {output_size!r} ({type(output_size).__name__})")
    sizes = [_as_int(op, "output_size", s) for s in output_size]
    non_spatial = 2 if batched else 1
    if len(sizes) == n + non_spatial:
        sizes = sizes[non_spatial:]
    if len(sizes) != n:
        raise ValueError(
            f"{op}: for {n + non_spatial}D input, output_size must have {n} or {n + non_spatial} elements "
            f"(got {len(sizes)})"
        )
    min_sizes = [
        (i - 1) * s - 2 * p + d * (k - 1) + 1
        for i, s, p, d, k in zip(in_spatial, stride, padding, dilation, kernel_size)
    ]
    max_sizes = [m + s - 1 for m, s in zip(min_sizes, stride)]
    if any(not (lo <= o <= hi) for o, lo, hi in zip(sizes, min_sizes, max_sizes)):
        raise ValueError(
            f"{op}: requested an output size of {tuple(sizes)}, but valid sizes range from {min_sizes} to "
            f"{max_sizes} (for an input of {list(in_spatial)})"
        )
    return tuple(o - m for o, m in zip(sizes, min_sizes))


def flops(spec: ConvSpec) -> int:
    """Multiply-adds x2 of the convolution (useful work, not counting inserted zeros)."""
    macs_per_output = spec.in_per_group * math.prod(spec.kernel_size)
    if spec.transposed:
        # Each input element meets every tap of its group's output channels.
        return 2 * spec.batch * spec.in_channels * math.prod(spec.in_spatial) * spec.out_per_group * \
            math.prod(spec.kernel_size)
    return 2 * spec.batch * spec.out_channels * math.prod(spec.out_spatial) * macs_per_output
