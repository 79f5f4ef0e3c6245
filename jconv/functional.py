"""conv1d/2d/3d and conv_transpose1d/2d/3d with torch.nn.functional's semantics.

Data flows one way: arguments -> ConvSpec (validated, hashable) -> padding mode -> dispatch -> one lowering ->
bias -> output. The six public functions are one N-d implementation each for forward and transposed
convolution, specialised by the number of spatial dimensions.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from jconv import dispatch, tuning
from jconv.arrays import as_jax
from jconv.determinism import are_deterministic_algorithms_enabled
from jconv.lowerings.common import channel_axis
from jconv.padding import apply_padding_mode
from jconv.spec import ConvSpec, IntOrTuple, make_spec

# torch tensors (detached) are accepted as well as JAX and NumPy arrays.
Array = Union[ArrayLike, Any]
Padding = Union[str, IntOrTuple]


def _explicitly_sharded_axes(a) -> tuple:
    """Axes of `a` sharded over Explicit mesh axes (sharding in types); () for everything else."""
    try:
        from jax.sharding import AxisType

        sharding = getattr(jax.typeof(a), "sharding", None)
    except (AttributeError, ImportError, TypeError):
        return ()
    mesh, spec = getattr(sharding, "mesh", None), getattr(sharding, "spec", None)
    if mesh is None or not spec or not hasattr(mesh, "axis_types"):
        return ()
    explicit = {name for name, kind in zip(mesh.axis_names, mesh.axis_types) if kind == AxisType.Explicit}
    names = lambda entry: entry if isinstance(entry, tuple) else (entry,)
    return tuple(i for i, entry in enumerate(spec) if entry is not None and explicit & set(names(entry)))


def _spec_from_arrays(op: str, n: int, transposed: bool, input, weight, bias, **kwargs) -> ConvSpec:
    for name, value in (("input", input), ("weight", weight)):
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise TypeError(f"{op}: {name} must be an array, but got {type(value).__name__}")
    if bias is not None and (not hasattr(bias, "shape") or not hasattr(bias, "dtype")):
        raise TypeError(f"{op}: bias must be an array or None, but got {type(bias).__name__}")
    return make_spec(
        op, n, transposed,
        tuple(input.shape), input.dtype, tuple(weight.shape), weight.dtype,
        None if bias is None else tuple(bias.shape), None if bias is None else bias.dtype,
        explicitly_sharded_axes=_explicitly_sharded_axes(input) if isinstance(input, jax.Array) or
        hasattr(input, "aval") else (),
        **kwargs,
    )


def _apply_lowering(spec: ConvSpec, deterministic: bool, tuning_state: tuple, x: jax.Array, w: jax.Array,
                    b: Optional[jax.Array]) -> jax.Array:
    """Mode padding, the lowering, the bias: array code only, every decision made from the static spec (and
    deterministic mode and the autotune state, read once by the caller so that they are part of the compiled
    program's key)."""
    if not spec.batched:
        x = x[None]
    x = apply_padding_mode(spec, x)
    y = dispatch.lower(spec, x, w, deterministic)
    if b is not None:
        shape = [1] * y.ndim
        shape[channel_axis(spec)] = spec.out_channels
        # Added in at least float32, so that the bias gradient (the output gradient summed over the batch and every
        # position) accumulates in float32 for half types, as PyTorch's does: a float16 sum over 15k positions was
        # 3% off. For float32 and float64 the casts are no-ops.
        acc = jnp.promote_types(y.dtype, jnp.float32)
        y = (y.astype(acc) + b.astype(acc).reshape(shape)).astype(y.dtype)
    return y if spec.batched else y[0]


def convolution(spec: ConvSpec, x, w, b) -> jax.Array:
    """The convolution `spec` describes, by the lowering dispatch selects: traced inline under a caller's
    transformation, else compiled once per (spec, lowering)."""
    out_dtype = spec.preferred_element_type or spec.dtype
    if spec.is_empty:
        # PyTorch returns an empty output for zero batch or zero input channels; so does lax, but not on every
        # backend, so we build it directly.
        return jnp.zeros(spec.out_shape, out_dtype)
    deterministic = are_deterministic_algorithms_enabled()
    tuning_state = tuning.state_key()
    # Autotune measures the batch each device runs: vmap's and the shards' (jconv.tuning.batch_factor).
    with tuning.batch_scaled(tuning.batch_factor(x)):
        tuning.collect(spec)
        dispatch.select(spec, deterministic=deterministic)  # an explicit lowering that cannot run raises here
        if any(isinstance(a, jax.core.Tracer) for a in (x, w, b)):
            # Inside the caller's jit/grad/vmap: trace inline. A nested jit would be inlined by XLA anyway, but
            # into a slower schedule (docs/lowerings.md, "Auto's rules").
            return _apply_lowering(spec, deterministic, tuning_state, x, w, b)
        return _compiled_apply_lowering(spec, deterministic, tuning_state, x, w, b)


# Eager calls: one compiled program per (spec, modes), so equal configurations compile once.
_compiled_apply_lowering = jax.jit(_apply_lowering, static_argnums=(0, 1, 2))


_CONV_DOC = """{n}-D convolution with torch.nn.functional.conv{n}d's semantics.

    Args:
      input: (N, C_in, {sp}) or unbatched (C_in, {sp}); with channels_last=True, (N, {sp}, C_in) or ({sp}, C_in).
      weight: (C_out, C_in/groups, {ks}), PyTorch's layout in either case.
      bias: optional (C_out,).
      stride, dilation: int or tuple of {n} ints, positive.
      padding: int or tuple of {n} non-negative ints, 'valid', or 'same' (stride 1 only; total d*(k-1) split as
        left = total//2, the extra on the right).
      groups: divides C_in and C_out; groups == C_in is a depthwise conv (C_out = multiplier * C_in).
      padding_mode: 'zeros', 'reflect' (pad < size), 'replicate', or 'circular' (pad <= size), applied with
        PyTorch's pad amounts.
      channels_last: take and return channels-last arrays (saves layout transposes on accelerators).
      precision, preferred_element_type: passed to lax.
      lowering: 'auto' (see jconv.explain) or a lowering name from jconv.LOWERING_NAMES.

    Returns:
      (N, C_out, {out}) (or channels-last / unbatched to match the input), where per spatial axis
      out = floor((in + pad_lo + pad_hi - dilation * (kernel - 1) - 1) / stride) + 1.
    """

_CONV_TRANSPOSE_DOC = """{n}-D transposed convolution with torch.nn.functional.conv_transpose{n}d's semantics.

    Args:
      input: (N, C_in, {sp}) or unbatched (C_in, {sp}); with channels_last=True, (N, {sp}, C_in) or ({sp}, C_in).
      weight: (C_in, C_out/groups, {ks}), PyTorch's layout in either case.
      bias: optional (C_out,).
      stride, dilation: int or tuple of {n} ints, positive.
      padding: int or tuple of {n} non-negative ints, cropped from both ends of the full output.
      output_padding: int or tuple; extra size on the high end; each must be smaller than stride or dilation.
      groups: divides C_in and C_out.
      output_size: optional target spatial size ({n} ints, or the full shape); sets output_padding as
        nn.ConvTranspose{n}d does, within [min, min + stride - 1].
      channels_last, precision, preferred_element_type, lowering: as for conv{n}d.

    Returns:
      (N, C_out, {out}), where per spatial axis
      out = (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1.
    """

_NAMES = {1: ("L", "kW", "L_out"), 2: ("H, W", "kH, kW", "H_out, W_out"),
          3: ("D, H, W", "kD, kH, kW", "D_out, H_out, W_out")}


def _conv_spec(n: int, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
               padding_mode="zeros", channels_last=False, precision=None, preferred_element_type=None,
               lowering="auto") -> ConvSpec:
    return _spec_from_arrays(
        f"conv{n}d", n, False, input, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups,
        padding_mode=padding_mode, channels_last=channels_last, precision=precision,
        preferred_element_type=preferred_element_type, lowering=lowering)


def _conv_transpose_spec(n: int, input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                         dilation=1, *, output_size=None, channels_last=False, precision=None,
                         preferred_element_type=None, lowering="auto") -> ConvSpec:
    return _spec_from_arrays(
        f"conv_transpose{n}d", n, True, input, weight, bias, stride=stride, padding=padding,
        output_padding=output_padding, groups=groups, dilation=dilation, output_size=output_size,
        channels_last=channels_last, precision=precision, preferred_element_type=preferred_element_type,
        lowering=lowering)


def _apply(op: str, build_spec: Callable[..., ConvSpec], n: int, arguments: dict) -> jax.Array:
    """The one implementation behind the six public functions: `arguments` are a public function's own, by name."""
    arguments = dict(arguments)
    x = as_jax(op, "input", arguments.pop("input"))
    w = as_jax(op, "weight", arguments.pop("weight"))
    bias = arguments.pop("bias")
    b = None if bias is None else as_jax(op, "bias", bias)
    return convolution(build_spec(n, x, w, b, **arguments), x, w, b)


def _public(n: int, transposed: bool):
    """Gives a public function its docstring and its `build_spec` (the ConvSpec it would run, for explain())."""
    template, build_spec = (_CONV_TRANSPOSE_DOC, _conv_transpose_spec) if transposed else (_CONV_DOC, _conv_spec)

    def decorate(fn):
        sp, ks, out = _NAMES[n]
        fn.__doc__ = template.format(n=n, sp=sp, ks=ks, out=out)
        fn.build_spec = functools.partial(build_spec, n)
        return fn

    return decorate


# Each public function passes its own arguments on by name (locals(), read before anything else is defined).


@_public(1, transposed=False)
def conv1d(input: Array, weight: Array, bias: Optional[Array] = None, stride: IntOrTuple = 1, padding: Padding = 0,
           dilation: IntOrTuple = 1, groups: int = 1, *, padding_mode: str = "zeros", channels_last: bool = False,
           precision: Any = None, preferred_element_type: Optional[DTypeLike] = None,
           lowering: str = "auto") -> jax.Array:
    return _apply("conv1d", _conv_spec, 1, locals())


@_public(2, transposed=False)
def conv2d(input: Array, weight: Array, bias: Optional[Array] = None, stride: IntOrTuple = 1, padding: Padding = 0,
           dilation: IntOrTuple = 1, groups: int = 1, *, padding_mode: str = "zeros", channels_last: bool = False,
           precision: Any = None, preferred_element_type: Optional[DTypeLike] = None,
           lowering: str = "auto") -> jax.Array:
    return _apply("conv2d", _conv_spec, 2, locals())


@_public(3, transposed=False)
def conv3d(input: Array, weight: Array, bias: Optional[Array] = None, stride: IntOrTuple = 1, padding: Padding = 0,
           dilation: IntOrTuple = 1, groups: int = 1, *, padding_mode: str = "zeros", channels_last: bool = False,
           precision: Any = None, preferred_element_type: Optional[DTypeLike] = None,
           lowering: str = "auto") -> jax.Array:
    return _apply("conv3d", _conv_spec, 3, locals())


@_public(1, transposed=True)
def conv_transpose1d(input: Array, weight: Array, bias: Optional[Array] = None, stride: IntOrTuple = 1,
                     padding: IntOrTuple = 0, output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                     *, output_size: Optional[Sequence[int]] = None, channels_last: bool = False, precision: Any = None,
                     preferred_element_type: Optional[DTypeLike] = None, lowering: str = "auto") -> jax.Array:
    return _apply("conv_transpose1d", _conv_transpose_spec, 1, locals())


@_public(2, transposed=True)
def conv_transpose2d(input: Array, weight: Array, bias: Optional[Array] = None, stride: IntOrTuple = 1,
                     padding: IntOrTuple = 0, output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                     *, output_size: Optional[Sequence[int]] = None, channels_last: bool = False, precision: Any = None,
                     preferred_element_type: Optional[DTypeLike] = None, lowering: str = "auto") -> jax.Array:
    return _apply("conv_transpose2d", _conv_transpose_spec, 2, locals())


@_public(3, transposed=True)
def conv_transpose3d(input: Array, weight: Array, bias: Optional[Array] = None, stride: IntOrTuple = 1,
                     padding: IntOrTuple = 0, output_padding: IntOrTuple = 0, groups: int = 1, dilation: IntOrTuple = 1,
                     *, output_size: Optional[Sequence[int]] = None, channels_last: bool = False, precision: Any = None,
                     preferred_element_type: Optional[DTypeLike] = None, lowering: str = "auto") -> jax.Array:
    return _apply("conv_transpose3d", _conv_transpose_spec, 3, locals())
