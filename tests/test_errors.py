"""Every invalid call raises ValueError/TypeError at trace time, naming the argument, in PyTorch's words."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv
from jconv.spec import make_spec

f32 = jnp.float32


def z(*shape, dtype=f32):
    return jnp.zeros(shape, dtype)


x4 = z(2, 4, 5, 5)
w2 = z(6, 2, 3, 3)


CONV_ERRORS = [
    # (description, call, exception, regex)
    ("input rank", lambda: jconv.conv2d(z(2, 4), w2, groups=2), ValueError,
     r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv2d, but got input of size: \[2, 4\]"),
    ("input rank 1d", lambda: jconv.conv1d(z(1, 2, 3, 4), z(1, 2, 1)), ValueError,
     r"Expected 2D \(unbatched\) or 3D \(batched\) input to conv1d"),
    ("weight rank", lambda: jconv.conv2d(x4, z(6, 4, 3)), ValueError,
     r"conv2d: expected weight to be 4-D \(out_channels, in_channels/groups, \*kernel_size\), but got weight of size \[6, 4, 3\]"),
    ("stride length", lambda: jconv.conv2d(x4, w2, groups=2, stride=(1, 2, 3)), ValueError,
     r"expected stride to be a single integer value or a list of 2 values to match the convolution "
     r"dimensions, but got stride=\[1, 2, 3\]"),
    ("padding length", lambda: jconv.conv2d(x4, w2, groups=2, padding=(1, 2, 3)), ValueError,
     r"expected padding to be a single integer value or a list of 2 values"),
    ("dilation length", lambda: jconv.conv3d(z(1, 1, 4, 4, 4), z(1, 1, 1, 1, 1), dilation=(1, 2)), ValueError,
     r"expected dilation to be a single integer value or a list of 3 values"),
    ("zero stride", lambda: jconv.conv2d(x4, w2, groups=2, stride=0), ValueError,
     r"conv2d: non-positive stride is not supported"),
    ("negative stride", lambda: jconv.conv2d(x4, w2, groups=2, stride=(1, -1)), ValueError,
     r"non-positive stride is not supported"),
    ("negative padding", lambda: jconv.conv2d(x4, w2, groups=2, padding=-1), ValueError,
     r"conv2d: negative padding is not supported"),
    ("zero dilation", lambda: jconv.conv2d(x4, w2, groups=2, dilation=0), ValueError,
     r"non-positive dilation is not supported"),
    ("zero groups", lambda: jconv.conv2d(x4, w2, groups=0), ValueError,
     r"non-positive groups is not supported"),
    ("bad padding string", lambda: jconv.conv2d(x4, w2, groups=2, padding="foo"), ValueError,
     r"Invalid padding string: 'foo'"),
    ("same with stride", lambda: jconv.conv2d(x4, w2, groups=2, padding="same", stride=(1, 2)), ValueError,
     r"padding='same' is not supported for strided convolutions"),
    ("unknown padding_mode", lambda: jconv.conv2d(x4, w2, groups=2, padding_mode="foo"), ValueError,
     r"padding_mode must be one of \['zeros', 'reflect', 'replicate', 'circular'\], but got padding_mode='foo'"),
    ("weight smaller than groups", lambda: jconv.conv2d(z(2, 8, 5, 5), z(6, 1, 3, 3), groups=8), ValueError,
     r"Given groups=8, expected weight to be at least 8 at dimension 0, but got weight of size \[6, 1, 3, 3\]"),
    ("weight not divisible by groups", lambda: jconv.conv2d(z(2, 8, 5, 5), z(6, 2, 3, 3), groups=4), ValueError,
     r"Given groups=4, expected weight to be divisible by 4 at dimension 0, but got weight of size \[6, 2, 3, 3\]"),
    ("zero out channels", lambda: jconv.conv2d(x4, z(0, 4, 3, 3)), ValueError,
     r"expected weight to be at least 1 at dimension 0"),
    ("input channels", lambda: jconv.conv2d(x4, w2), ValueError,
     r"Given groups=1, weight of size \[6, 2, 3, 3\], expected input\[2, 4, 5, 5\] to have 2 channels, but got "
     r"4 channels instead"),
    ("input channels channels_last", lambda: jconv.conv2d(z(2, 5, 5, 4), w2, channels_last=True), ValueError,
     r"expected input\[2, 4, 5, 5\] to have 2 channels, but got 4 channels"),
    ("bias size", lambda: jconv.conv2d(x4, w2, z(5), groups=2), ValueError,
     r"Given weight of size \[6, 2, 3, 3\], expected bias to be 1-dimensional with 6 elements, but got bias of "
     r"size \[5\] instead"),
    ("bias rank", lambda: jconv.conv2d(x4, w2, z(6, 1), groups=2), ValueError,
     r"expected bias to be 1-dimensional with 6 elements, but got bias of size \[6, 1\]"),
    ("kernel larger than input", lambda: jconv.conv2d(z(1, 2, 2, 2), z(1, 2, 3, 3)), ValueError,
     r"Calculated padded input size per channel: \(2 x 2\). Kernel size: \(3 x 3\). Kernel size can't be greater "
     r"than actual input size"),
    ("dilated kernel larger than input", lambda: jconv.conv1d(z(1, 2, 4), z(1, 2, 3), dilation=2), ValueError,
     r"Calculated padded input size per channel: \(4\). Kernel size: \(5\)"),
    ("zero spatial", lambda: jconv.conv2d(z(1, 4, 0, 5), w2, groups=2, padding=1), ValueError,
     r"Only zero batch or zero channel inputs are supported, but got input shape: \[1, 4, 0, 5\]"),
    ("reflect too large", lambda: jconv.conv2d(x4, w2, groups=2, padding=5, padding_mode="reflect"), ValueError,
     r"padding_mode='reflect': Padding size should be less than the corresponding input dimension"),
    ("reflect equal", lambda: jconv.conv1d(z(1, 2, 2), z(2, 2, 3), padding=2, padding_mode="reflect"), ValueError,
     r"Padding size should be less than the corresponding input dimension, but got: padding \(2, 2\)"),
    ("circular too large", lambda: jconv.conv2d(x4, w2, groups=2, padding=6, padding_mode="circular"), ValueError,
     r"padding_mode='circular': Padding value causes wrapping around more than once"),
    ("input/weight dtype", lambda: jconv.conv2d(x4.astype(jnp.float16), w2, groups=2), TypeError,
     r"conv2d: Input type \(float16\) and weight type \(float32\) should be the same"),
    ("bias dtype", lambda: jconv.conv2d(x4, w2, z(6, dtype=jnp.bfloat16), groups=2), TypeError,
     r"Input type \(float32\) and bias type \(bfloat16\) should be the same"),
    ("integer input", lambda: jconv.conv2d(x4.astype(jnp.int32), w2.astype(jnp.int32), groups=2), TypeError,
     r"conv2d: input dtype must be one of float16, bfloat16, float32, float64, complex64, complex128, but got "
     r"int32"),
    ("real preferred type, complex input", lambda: jconv.conv2d(x4.astype(jnp.complex64), w2.astype(jnp.complex64),
                                                                groups=2, preferred_element_type=jnp.float32),
     TypeError, r"conv2d: preferred_element_type=float32 for a complex64 input: expected a complex dtype"),
    ("float stride", lambda: jconv.conv2d(x4, w2, groups=2, stride=1.5), TypeError,
     r"conv2d: stride must be an int or a tuple of ints, but got 1.5"),
    ("float in padding tuple", lambda: jconv.conv2d(x4, w2, groups=2, padding=(1, 0.5)), TypeError,
     r"padding must be an int or a tuple of ints, but got 0.5"),
    ("string groups", lambda: jconv.conv2d(x4, w2, groups="2"), TypeError, r"groups must be an int"),
    ("padding_mode type", lambda: jconv.conv2d(x4, w2, groups=2, padding_mode=None), TypeError,
     r"padding_mode must be a string"),
    ("unknown lowering", lambda: jconv.conv2d(x4, w2, groups=2, lowering="fast"), ValueError,
     r"conv2d: unknown lowering='fast'; expected one of \['auto', 'autotune', 'xla'"),
    ("lowering type", lambda: jconv.conv2d(x4, w2, groups=2, lowering=1), TypeError, r"lowering must be a string"),
    ("bad precision", lambda: jconv.conv2d(x4, w2, groups=2, precision="ultra"), ValueError,
     r"conv2d: precision must be None"),
    ("input not an array", lambda: jconv.conv2d("abc", w2), TypeError, r"conv2d: input"),
    ("channels_last type", lambda: jconv.conv2d(x4, w2, groups=2, channels_last="yes"), TypeError,
     r"channels_last must be a bool"),
]

xt = z(2, 4, 5, 5)
wt = z(4, 3, 3, 3)

TRANSPOSE_ERRORS = [
    ("output_padding >= stride and dilation",
     lambda: jconv.conv_transpose2d(xt, wt, stride=2, output_padding=2), ValueError,
     r"conv_transpose2d: output padding must be smaller than either stride or dilation"),
    ("negative output_padding", lambda: jconv.conv_transpose2d(xt, wt, stride=2, output_padding=-1), ValueError,
     r"negative output_padding is not supported"),
    ("negative padding", lambda: jconv.conv_transpose2d(xt, wt, padding=(0, -1)), ValueError,
     r"negative padding is not supported"),
    ("string padding", lambda: jconv.conv_transpose2d(xt, wt, padding="same"), TypeError,
     r"conv_transpose2d: argument 'padding' must be an int or a tuple of ints, not str"),
    ("input channels", lambda: jconv.conv_transpose2d(z(2, 3, 5, 5), wt), ValueError,
     r"Given transposed=1, weight of size \[4, 3, 3, 3\], expected input\[2, 3, 5, 5\] to have 4 channels, but "
     r"got 3 channels instead"),
    ("groups divide weight", lambda: jconv.conv_transpose2d(xt, wt, groups=3), ValueError,
     r"Given groups=3, expected weight to be divisible by 3 at dimension 0, but got weight of size \[4, 3, 3, 3\]"),
    ("bias size", lambda: jconv.conv_transpose2d(xt, wt, z(4)), ValueError,
     r"Given transposed=1, weight of size \[4, 3, 3, 3\], expected bias to be 1-dimensional with 3 elements"),
    ("output too small", lambda: jconv.conv_transpose2d(z(1, 4, 1, 1), wt, padding=3), ValueError,
     r"Given input size per channel: \(1 x 1\). Calculated output size per channel: \(-3 x -3\). Output size is "
     r"too small"),
    ("output_size out of range", lambda: jconv.conv_transpose2d(xt, wt, stride=2, output_size=(20, 20)), ValueError,
     r"requested an output size of \(20, 20\), but valid sizes range from \[11, 11\] to \[12, 12\] \(for an input "
     r"of \[5, 5\]\)"),
    ("output_size length", lambda: jconv.conv_transpose2d(xt, wt, stride=2, output_size=(20, 20, 1)), ValueError,
     r"for 4D input, output_size must have 2 or 4 elements \(got 3\)"),
    ("output_size type", lambda: jconv.conv_transpose2d(xt, wt, stride=2, output_size=(11.5, 11)), TypeError,
     r"output_size must be an int"),
    ("zero spatial", lambda: jconv.conv_transpose2d(z(1, 4, 0, 5), wt), ValueError,
     r"Only zero batch or zero channel inputs are supported"),
    ("dtype", lambda: jconv.conv_transpose2d(xt.astype(jnp.bfloat16), wt), TypeError,
     r"Input type \(bfloat16\) and weight type \(float32\) should be the same"),
    ("weight rank", lambda: jconv.conv_transpose1d(z(1, 4, 5), z(4, 3)), ValueError,
     r"conv_transpose1d: expected weight to be 3-D \(in_channels, out_channels/groups, \*kernel_size\)"),
]


@pytest.mark.parametrize("call,exc,regex", [c[1:] for c in CONV_ERRORS + TRANSPOSE_ERRORS],
                         ids=[c[0] for c in CONV_ERRORS + TRANSPOSE_ERRORS])
def test_error(call, exc, regex):
    with pytest.raises(exc, match=regex):
        call()


def test_errors_are_raised_at_trace_time_under_jit():
    """Validation needs only shapes, so it fires while tracing, before XLA sees anything."""
    f = jax.jit(lambda x, w: jconv.conv2d(x, w, stride=0))
    with pytest.raises(ValueError, match="non-positive stride"):
        f.lower(jax.ShapeDtypeStruct((1, 2, 5, 5), f32), jax.ShapeDtypeStruct((3, 2, 3, 3), f32))


def test_output_size_only_for_transposed():
    with pytest.raises(TypeError, match="output_size is only accepted by transposed convolutions"):
        make_spec("conv2d", 2, False, (2, 4, 5, 5), f32, (6, 2, 3, 3), f32, None, None, groups=2,
                  output_size=(3, 3))


def test_padding_mode_zeros_only_for_transposed():
    # Public conv_transpose functions have no padding_mode argument (as in torch.nn.functional), but the
    # spec rejects it for modules that would pass one through.
    with pytest.raises(ValueError, match='Only "zeros" padding mode is supported for conv_transpose2d'):
        make_spec("conv_transpose2d", 2, True, (1, 4, 5, 5), f32, (4, 3, 3, 3), f32, None, None,
                  padding_mode="reflect")


def test_numpy_integer_arguments_accepted():
    y = jconv.conv2d(x4, w2, groups=np.int64(2), stride=np.array([1, 2]), padding=(np.int32(1), 1))
    assert y.shape == (2, 6, 5, 3)


# --- one answer per call, whatever the lowering ------------------------------------------------------------

# (lowering, call with that lowering and a given preferred_element_type)
_PET_CALLS = [
    ("xla", lambda pet, low: jconv.conv2d(x4, w2, groups=2, lowering=low, preferred_element_type=pet)),
    ("taps", lambda pet, low: jconv.conv2d(x4, z(4, 1, 3, 3), groups=4, lowering=low, preferred_element_type=pet)),
    ("matmul", lambda pet, low: jconv.conv2d(x4, z(6, 4, 1, 1), lowering=low, preferred_element_type=pet)),
    ("grouped", lambda pet, low: jconv.conv2d(x4, w2, groups=2, lowering=low, preferred_element_type=pet)),
    ("phase", lambda pet, low: jconv.conv_transpose2d(x4, z(4, 3, 3, 3), stride=2, lowering=low,
                                                      preferred_element_type=pet)),
    ("pallas", lambda pet, low: jconv.conv2d(x4, z(4, 1, 3, 3), groups=4, lowering=low, preferred_element_type=pet)),
    ("im2col", lambda pet, low: jconv.conv2d(x4, z(6, 4, 3, 3), lowering=low, preferred_element_type=pet)),
]


@pytest.mark.parametrize("lowering,call", _PET_CALLS, ids=[c[0] for c in _PET_CALLS])
def test_narrowing_preferred_element_type_is_refused_by_every_lowering(lowering, call):
    """lax refuses a preferred_element_type narrower than the input; so does every lowering, with jconv's prefix
    (several used to accept it, so a call that ran on CPU failed on GPU, where auto is lax)."""
    for low in (lowering, "auto"):
        with pytest.raises(TypeError, match=r"conv(_transpose)?2d: preferred_element_type=bfloat16 is narrower than "
                                            r"the float32 input"):
            call(jnp.bfloat16, low)
    assert call(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32, lowering).shape[0] == 2


@pytest.mark.parametrize("lowering", ["auto", "xla", "phase"])
def test_transposed_conv_with_zero_output_channels_is_refused_by_every_lowering(lowering):
    """torch raises for it; auto/phase raised ZeroDivisionError on some shapes and xla returned an empty array."""
    with pytest.raises(ValueError, match=r"conv_transpose2d: weight of size \[4, 0, 3, 3\] gives zero output "
                                         r"channels"):
        jconv.conv_transpose2d(x4, z(4, 0, 3, 3), stride=2, lowering=lowering)
    with pytest.raises(ValueError, match="gives zero output channels"):
        jconv.conv_transpose1d(z(2, 4, 5), z(4, 0, 3), groups=2, lowering=lowering)


# --- messages -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argument,call", [
    ("stride", lambda s: jconv.conv2d(x4, w2, groups=2, stride=s)),
    ("padding", lambda p: jconv.conv2d(x4, w2, groups=2, padding=p)),
    ("dilation", lambda d: jconv.conv2d(x4, w2, groups=2, dilation=(1, d))),
    ("output_size", lambda o: jconv.conv_transpose2d(x4, z(4, 2, 3, 3), stride=2, output_size=(o, 11))),
])
def test_traced_hyper_parameters_say_to_make_them_static(argument, call):
    with pytest.raises(TypeError, match=rf"{argument} must be a static Python int .* but got a traced value.*"
                                        r"static_argnames"):
        jax.jit(call)(2)


def test_output_size_as_an_int_names_the_expected_form():
    with pytest.raises(TypeError, match=r"conv_transpose2d: output_size must be a list or tuple of ints \(2 spatial "
                                        r"sizes, or the full output shape\), but got 11 \(int\)"):
        jconv.conv_transpose2d(x4, z(4, 2, 3, 3), stride=2, output_size=11)


def test_torch_tensors_are_accepted_detached_and_refused_with_requires_grad():
    """One documented rule: a torch tensor is converted (bfloat16 included, exactly); one that requires grad is
    refused with a message that says to detach it, since gradients cannot flow back into torch's graph."""
    torch = pytest.importorskip("torch")
    xt = torch.randn(2, 4, 5, 5)
    wt = torch.randn(6, 2, 3, 3)
    expected = jconv.conv2d(jnp.asarray(xt.numpy()), jnp.asarray(wt.numpy()), groups=2)
    np.testing.assert_array_equal(np.asarray(jconv.conv2d(xt, wt, groups=2)), np.asarray(expected))
    y16 = jconv.conv2d(xt.to(torch.bfloat16), wt.to(torch.bfloat16), groups=2)
    assert y16.dtype == jnp.bfloat16
    with pytest.raises(TypeError, match=r"conv2d: weight is a torch tensor that requires grad; .*Pass "
                                        r"weight\.detach\(\)"):
        jconv.conv2d(xt, torch.nn.Parameter(wt), groups=2)


@pytest.mark.parametrize("value", ["abc", None, np.array([object()] * 4)], ids=["str", "None", "object"])
def test_non_numeric_inputs_are_refused(value):
    with pytest.raises(TypeError, match="conv1d: input must be"):
        jconv.conv1d(value, z(2, 1, 3))
