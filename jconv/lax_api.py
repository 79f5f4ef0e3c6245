"""lax.conv_general_dilated and lax.conv_transpose with lax's own signatures and results, lowered by jconv.

A drop-in for code written against lax, Flax's `nnx.Conv` and `linen.Conv` included (their
`conv_general_dilated=` argument). Each call is first shape-checked by lax itself (`jax.eval_shape`), so bad input
raises lax's own errors and the result has lax's shape and dtype. What jconv can express is then restated in
PyTorch's terms, a `ConvSpec` (layouts transposed, negative padding cropped from the input, a transposed conv's
kernel flipped with its channel axes swapped), and dispatched like any jconv call; the rest runs lax unchanged
(docs/lax_api.md).
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import Any, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jconv import dispatch
from jconv.functional import convolution
from jconv.lowerings import xla
from jconv.lowerings.common import conv_weight_as_transposed
from jconv.spec import SUPPORTED_DTYPES, ConvSpec, check_lowering, make_spec

OP = "conv_general_dilated"


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one lax call runs as a jconv convolution; static, so jit caches on it."""

    spec: ConvSpec
    lhs_perm: Tuple[int, ...]  # lhs axes in the order of the spec's input layout
    rhs_perm: Tuple[int, ...]  # rhs axes as (out features, in features, *spatial)
    crop: Tuple[Tuple[int, int], ...]  # (start, stop) kept of each spatial input axis: lax's negative padding
    # Amounts cropped from the ends of each spatial output axis (negative: zeros added), where a transposed conv's
    # padding is beyond torch's forms.
    out_adjust: Tuple[Tuple[int, int], ...]
    out_perm: Tuple[int, ...]  # from (batch, features, *spatial) to lax's output layout


def _canonical(value: Any) -> Any:
    """Lists (padding pairs, dimension-number strings, precisions) as tuples, so a call's arguments can key a
    cache; anything else as it is."""
    if isinstance(value, list) or type(value) is tuple:  # not ConvDimensionNumbers, a NamedTuple
        return tuple(_canonical(v) for v in value)
    return value


def _lax_pads(padding, in_spatial, kernel, rhs_dilation, strides) -> Tuple[Tuple[int, int], ...]:
    """lax's (lo, hi) pairs for `padding` (lax.conv_general_dilated's own computation)."""
    if isinstance(padding, str):
        dilated = [(k - 1) * d + 1 for k, d in zip(kernel, rhs_dilation)]
        return tuple(lax.padtype_to_pads(in_spatial, dilated, strides, padding))
    return tuple((operator.index(lo), operator.index(hi)) for lo, hi in padding)


def _transposed_terms(in_spatial, kernel, lhs_dilation, rhs_dilation, strides, pads) -> Union[str, tuple]:
    """A conv of the lhs dilated by s as torch's conv_transpose, per axis: (padding, output_padding, adjust).

    lax's (lo, hi) crop d*(k-1) - lo and d*(k-1) - hi from the ends of the full transposed output (a negative crop
    adds positions that see only padding: zeros). Torch's padding p and output_padding crop p and p - output_padding,
    with 0 <= output_padding < max(s, d); what they cannot express is cropped or zero-padded after (`adjust`, the
    amounts cropped at each end, negative for zeros added). Returns that, or why it cannot be."""
    if any(s != 1 for s in strides):
        return "window strides together with lhs_dilation"
    padding, output_padding, adjust = [], [], []
    for k, s, d, (lo, hi) in zip(kernel, lhs_dilation, rhs_dilation, pads):
        crop_lo, crop_hi = d * (k - 1) - lo, d * (k - 1) - hi
        if crop_lo >= 0 and 0 <= crop_lo - crop_hi < max(s, d):
            p, op = crop_lo, crop_lo - crop_hi
        else:
            p, op = max(0, min(crop_lo, crop_hi)), 0
        padding.append(p)
        output_padding.append(op)
        adjust.append((crop_lo - p, crop_hi - (p - op)))
    return tuple(padding), tuple(output_padding), tuple(adjust)


@functools.lru_cache(maxsize=512)
def _plan(lhs_type: tuple, rhs_type: tuple, lax_arguments: tuple, lowering: str) -> Union[Plan, str]:
    """The Plan for a call on operands of these (shape, dtype), or why lax runs it unchanged. Raises lax's own
    error for a call lax refuses."""
    lhs, rhs = jax.ShapeDtypeStruct(*lhs_type), jax.ShapeDtypeStruct(*rhs_type)
    kw = dict(lax_arguments)
    out = jax.eval_shape(functools.partial(lax.conv_general_dilated, **kw), lhs, rhs)
    n = lhs.ndim - 2
    dtype = np.dtype(lhs.dtype)
    if not 1 <= n <= 3:
        return f"{n} spatial dimensions (jconv has 1 to 3)"
    if kw["batch_group_count"] != 1 or kw.get("out_sharding") is not None:
        return "batch_group_count or out_sharding"
    if not any(dtype == np.dtype(d) for d in SUPPORTED_DTYPES):
        return f"dtype {dtype.name} (jconv has floating and complex dtypes)"
    if 0 in lhs.shape or 0 in rhs.shape or 0 in out.shape:
        return "an empty operand or result"
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, kw["dimension_numbers"])
    lhs_dilation = tuple(kw["lhs_dilation"] or (1,) * n)
    rhs_dilation = tuple(kw["rhs_dilation"] or (1,) * n)
    strides = tuple(kw["window_strides"])
    in_spatial = [lhs.shape[a] for a in dn.lhs_spec[2:]]
    kernel = tuple(rhs.shape[a] for a in dn.rhs_spec[2:])
    pads = _lax_pads(kw["padding"], in_spatial, kernel, rhs_dilation, strides)
    channels_last_perm = (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1])
    channels_last = channels_last_perm == tuple(range(n + 2))
    lhs_perm = channels_last_perm if channels_last else tuple(dn.lhs_spec)
    out_channels, in_per_group = rhs.shape[dn.rhs_spec[0]], rhs.shape[dn.rhs_spec[1]]
    groups = kw["feature_group_count"]
    common = dict(dilation=rhs_dilation, groups=groups, channels_last=channels_last, precision=kw["precision"],
                  preferred_element_type=kw["preferred_element_type"], lowering=lowering)
    transposed = any(s != 1 for s in lhs_dilation)
    if transposed:
        terms = _transposed_terms(in_spatial, kernel, lhs_dilation, rhs_dilation, strides, pads)
        if isinstance(terms, str):
            return terms
        crop, out_adjust = tuple((0, i) for i in in_spatial), terms[2]
        weight_shape = (in_per_group * groups, out_channels // groups, *kernel)
        kwargs = dict(stride=lhs_dilation, padding=terms[0], output_padding=terms[1], **common)
    else:
        out_adjust = ((0, 0),) * n
        crop = tuple((max(-lo, 0), i - max(-hi, 0)) for i, (lo, hi) in zip(in_spatial, pads))
        if any(start >= stop for start, stop in crop):
            return "negative padding that crops the whole input"
        weight_shape = (out_channels, in_per_group, *kernel)
        kwargs = dict(stride=strides, explicit_pads=tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads), **common)
    cropped = [stop - start for start, stop in crop]
    batch, features = lhs.shape[dn.lhs_spec[0]], lhs.shape[dn.lhs_spec[1]]
    input_shape = (batch, *cropped, features) if channels_last else (batch, features, *cropped)
    try:
        spec = make_spec(OP, n, transposed, input_shape, dtype, weight_shape, dtype, None, None, **kwargs)
    except (TypeError, ValueError) as e:  # lax's forms that torch's have no word for (a precision, say)
        return f"jconv's checks refuse it: {e}"
    adjusted = tuple(o - lo - hi for o, (lo, hi) in zip(spec.out_spatial, out_adjust))
    assert adjusted == tuple(out.shape[a] for a in dn.out_spec[2:]), (spec, out_adjust, out.shape)
    return Plan(spec, lhs_perm, tuple(dn.rhs_spec), crop, out_adjust, tuple(int(a) for a in np.argsort(dn.out_spec)))


def _torch_weight(plan: Plan, rhs: jax.Array) -> jax.Array:
    """lax's kernel in torch's layout: (O, I/g, *k), or for a transposed conv (I, O/g, *k) flipped."""
    w = jnp.transpose(rhs, plan.rhs_perm)
    return conv_weight_as_transposed(plan.spec, w) if plan.spec.transposed else w


def _run(plan: Plan, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
    spec = plan.spec
    x = jnp.transpose(lhs, plan.lhs_perm)
    first = 1 if spec.channels_last else 2
    x = x[(slice(None),) * first + tuple(slice(start, stop) for start, stop in plan.crop)]
    y = convolution(spec, x, _torch_weight(plan, rhs), None)
    if spec.channels_last:
        y = jnp.moveaxis(y, -1, 1)
    if any(amounts != (0, 0) for amounts in plan.out_adjust):
        y = lax.pad(y, jnp.zeros((), y.dtype), ((0, 0, 0),) * 2 + tuple((-lo, -hi, 0) for lo, hi in plan.out_adjust))
    return jnp.transpose(y, plan.out_perm)


# Eager calls: one compiled program per plan.
_compiled_run = jax.jit(_run, static_argnums=0)


def _lax_arguments(window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                   batch_group_count, precision, preferred_element_type, out_sharding) -> tuple:
    arguments = dict(window_strides=window_strides, padding=padding, lhs_dilation=lhs_dilation,
                     rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
                     feature_group_count=feature_group_count, batch_group_count=batch_group_count,
                     precision=precision, preferred_element_type=preferred_element_type)
    if out_sharding is not None:  # passed only when given, so that a jax without the argument is not asked for it
        arguments["out_sharding"] = out_sharding
    return tuple((k, _canonical(v)) for k, v in arguments.items())


def plan(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
         feature_group_count=1, batch_group_count=1, precision=None, preferred_element_type=None, out_sharding=None,
         *, lowering: str = "auto") -> Union[Plan, str]:
    """What conv_general_dilated does with these arguments: a Plan (jconv's ConvSpec and the layout changes around
    it) or, where lax runs the call unchanged, a sentence saying why. Arrays may be jax.ShapeDtypeStruct."""
    check_lowering(OP, lowering)  # jconv's own argument: a mistake in it is an error, never a silent lax call
    arguments = _lax_arguments(window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                               feature_group_count, batch_group_count, precision, preferred_element_type, out_sharding)
    try:  # as lax sees them: float64 NumPy arrays are float32 without jax_enable_x64
        types = [(tuple(a.shape), jax.dtypes.canonicalize_dtype(a.dtype)) for a in (lhs, rhs)]
    except (AttributeError, TypeError):
        return "an operand that is not a JAX or NumPy array"
    try:
        hash(arguments)
    except TypeError:  # an unhashable form lax may still take: plan it uncached
        return _plan.__wrapped__(*types, arguments, lowering)
    return _plan(*types, arguments, lowering)


def _runs_lax_itself(spec: ConvSpec) -> bool:
    """Whether the lowering dispatch picks is lax's convolution as it is: then the caller's own call runs, in the
    caller's layouts (an HWIO kernel transposed to torch's layout slowed XLA:CPU's backward pass;
    docs/lax_api.md)."""
    return dispatch.select(spec).lowering == xla.NAME and not xla.pads_beforehand(spec)


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding: Union[str, Sequence[Tuple[int, int]]],
                         lhs_dilation: Optional[Sequence[int]] = None, rhs_dilation: Optional[Sequence[int]] = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: Any = None, preferred_element_type: Any = None, out_sharding: Any = None, *,
                         lowering: str = "auto") -> jax.Array:
    """lax.conv_general_dilated, with its signature, argument forms, results and errors, lowered by jconv.

    Pass it where lax's is taken: `flax.nnx.Conv(..., conv_general_dilated=jconv.conv_general_dilated)`, or
    `flax.linen.Conv(..., conv_general_dilated=jconv.conv_general_dilated)`. `lowering` is jconv's own: 'auto',
    'autotune', or a name from jconv.LOWERING_NAMES (functools.partial fixes it for a module); a named lowering
    that cannot take the call raises a ValueError, as in jconv's other functions. `jconv.lax_api.plan(...)` with the
    same arguments says what runs.
    """
    outcome = plan(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                   feature_group_count, batch_group_count, precision, preferred_element_type, out_sharding,
                   lowering=lowering)
    if isinstance(outcome, str) and lowering.partition(":")[0] not in ("auto", "autotune", xla.NAME):
        raise ValueError(f"{OP}: lowering={lowering!r} cannot handle this call, which runs lax itself: {outcome}")
    if isinstance(outcome, str) or _runs_lax_itself(outcome.spec):
        extra = {} if out_sharding is None else dict(out_sharding=out_sharding)
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count, precision,
                                        preferred_element_type, **extra)
    if any(isinstance(a, jax.core.Tracer) for a in (lhs, rhs)):
        return _run(outcome, lhs, rhs)
    return _compiled_run(outcome, lhs, rhs)


def _build_spec(lhs, rhs, *args, **kwargs) -> ConvSpec:
    """For jconv.explain: the ConvSpec a call runs, or a ValueError saying lax runs it unchanged."""
    outcome = plan(lhs, rhs, *args, **kwargs)
    if isinstance(outcome, str):
        raise ValueError(f"{OP}: jconv runs lax.conv_general_dilated unchanged for this call: {outcome}")
    return outcome.spec


conv_general_dilated.build_spec = _build_spec


def _transpose_padding(k: int, s: int, padding) -> Tuple[int, int]:
    """lax.conv_transpose's (lo, hi) for one axis, from the forward conv's padding (its _conv_transpose_padding)."""
    if padding == "SAME":
        pad_len = k + s - 2
        pad_a = k - 1 if s > k - 1 else int(np.ceil(pad_len / 2))
    elif padding == "VALID":
        pad_len = k + s - 2 + max(k - s, 0)
        pad_a = k - 1
    elif isinstance(padding, tuple):
        pads = tuple(k - p - 1 for p in padding)
        pad_a, pad_len = pads[0], sum(pads)
    else:
        raise ValueError(f"Invalid padding mode: {padding}")
    return pad_a, pad_len - pad_a


_TRANSPOSE_LAYOUTS = {2: ("NC", "IO", "NC"), 3: ("NHC", "HIO", "NHC"), 4: ("NHWC", "HWIO", "NHWC"),
                      5: ("NHWDC", "HWDIO", "NHWDC")}


def conv_transpose(lhs, rhs, strides: Sequence[int], padding: Union[str, Sequence[Tuple[int, int]]],
                   rhs_dilation: Optional[Sequence[int]] = None, dimension_numbers: Any = None,
                   transpose_kernel: bool = False, precision: Any = None, preferred_element_type: Any = None,
                   use_consistent_padding: bool = False, *, lowering: str = "auto") -> jax.Array:
    """lax.conv_transpose, with its signature and results, through conv_general_dilated above (the same steps as
    lax's: its default layouts, its padding for 'SAME'/'VALID', the optional kernel transpose)."""
    if lhs.ndim != rhs.ndim or lhs.ndim < 2:
        raise ValueError(f"conv_transpose: lhs and rhs must have the same rank, at least 2, but got {lhs.shape} "
                         f"and {rhs.shape}")
    if dimension_numbers is None:
        if lhs.ndim not in _TRANSPOSE_LAYOUTS:
            raise ValueError("No 4+ dimensional dimension_number defaults.")
        dimension_numbers = _TRANSPOSE_LAYOUTS[lhs.ndim]
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    kernel = [rhs.shape[a] for a in dn.rhs_spec[2:]]
    rhs_dilation = tuple(rhs_dilation or (1,) * (rhs.ndim - 2))
    if use_consistent_padding or (isinstance(padding, str) and padding in {"SAME", "VALID"}):
        per_axis = [padding] * len(strides) if isinstance(padding, str) else [tuple(p) for p in padding]
        pads = tuple(_transpose_padding((k - 1) * d + 1, s, p)
                     for k, d, s, p in zip(kernel, rhs_dilation, strides, per_axis))
    else:
        pads = padding
    if transpose_kernel:  # flip spatial axes and swap the feature axes, as lax does
        rhs = jnp.flip(rhs, axis=tuple(dn.rhs_spec[2:])).swapaxes(dn.rhs_spec[0], dn.rhs_spec[1])
    return conv_general_dilated(lhs, rhs, (1,) * (lhs.ndim - 2), pads, strides, rhs_dilation, dn,
                                precision=precision, preferred_element_type=preferred_element_type,
                                lowering=lowering)
