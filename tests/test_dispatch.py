"""The rule table: what auto picks per platform, explicit choices, and refusals."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import jconv
from jconv import dispatch

S = jax.ShapeDtypeStruct
f32 = jnp.float32

CASES = [  # (fn, input, weight, kwargs, lowering auto picks on CPU)
    (jconv.conv2d, (8, 96, 56, 56), (96, 1, 7, 7), dict(padding=3, groups=96), "taps"),
    (jconv.conv1d, (4, 512, 2048), (1024, 1, 4), dict(padding=3, groups=512), "taps"),  # multiplier 2
    (jconv.conv2d, (4, 256, 28, 28), (256, 8, 3, 3), dict(padding=1, groups=32), "grouped"),
    (jconv.conv2d, (8, 256, 28, 28), (64, 256, 1, 1), {}, "matmul"),
    (jconv.conv2d, (8, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), "xla"),
    (jconv.conv2d, (8, 64, 56, 56), (64, 64, 3, 3), dict(padding=4, dilation=4), "xla"),
    (jconv.conv2d, (8, 64, 56, 56), (64, 64, 3, 3), dict(padding=1, stride=2), "xla"),
    (jconv.conv2d, (8, 56, 56, 64), (64, 64, 3, 3), dict(padding=4, dilation=4, channels_last=True), "xla"),
    (jconv.conv2d, (4, 64, 64, 3), (32, 3, 7, 7), dict(padding=3, channels_last=True), "xla"),  # 3 channels
    (jconv.conv2d, (32, 7, 7, 512), (512, 512, 3, 3), dict(padding=1, channels_last=True), "xla"),  # 7x7
    (jconv.conv2d, (8, 56, 56, 64), (64, 64, 3, 3), dict(padding=1, stride=2, channels_last=True), "xla"),
    (jconv.conv1d, (4, 8192, 64), (64, 64, 3), dict(padding=16, dilation=16, channels_last=True), "xla"),
    (jconv.conv_transpose2d, (8, 64, 28, 28), (64, 32, 4, 4), dict(stride=2, padding=1), "phase"),
    (jconv.conv3d, (1, 32, 32, 32, 32), (32, 32, 3, 3, 3), dict(padding=1), "planes"),
    (jconv.conv3d, (2, 64, 16, 16, 16), (64, 16, 3, 3, 3), dict(padding=1, groups=4), "planes"),
    (jconv.conv3d, (2, 64, 16, 16, 16), (64, 1, 3, 3, 3), dict(padding=1, groups=64), "taps"),
    (jconv.conv3d, (2, 64, 16, 16, 16), (32, 64, 1, 1, 1), {}, "matmul"),
]


@pytest.mark.parametrize("fn,xs,ws,kw,expected", CASES)
def test_auto_on_cpu(fn, xs, ws, kw, expected):
    assert jconv.explain(fn, S(xs, f32), S(ws, f32), platform="cpu", **kw).lowering == expected


@pytest.mark.parametrize("fn,xs,ws,kw,expected", CASES)
def test_auto_on_unmeasured_platforms_keeps_xla(fn, xs, ws, kw, expected):
    for platform in ("gpu", "tpu"):
        assert jconv.explain(fn, S(xs, f32), S(ws, f32), platform=platform, **kw).lowering == "xla"


def test_every_rule_cites_a_measurement_or_reason():
    for rule in dispatch.RULES:
        assert rule.lowering in dispatch.LOWERINGS and len(rule.reason) > 20
    assert dispatch.RULES[-1].when(None) and dispatch.RULES[-1].lowering == "xla"  # the catch-all comes last


@pytest.mark.parametrize("lowering,fn,xs,ws,kw,regex", [
    ("taps", jconv.conv2d, (1, 4, 8, 8), (4, 4, 3, 3), {}, "lowering='taps' cannot handle this convolution: needs a "
     "depthwise conv"),
    ("matmul", jconv.conv2d, (1, 4, 8, 8), (4, 4, 3, 3), {}, "needs a kernel of size 1"),
    ("grouped", jconv.conv2d, (1, 4, 8, 8), (4, 4, 3, 3), {}, "groups == 1: nothing to split"),
    ("dilated", jconv.conv2d, (1, 4, 8, 8), (4, 4, 3, 3), dict(dilation=2, stride=2), "needs stride 1 along every"),
    ("phase", jconv.conv2d, (1, 4, 8, 8), (4, 4, 3, 3), {}, "phase decomposition is for transposed"),
    ("taps", jconv.conv_transpose1d, (1, 4, 8), (4, 1, 3), dict(groups=4), "transposed convolutions are handled by the phase and xla"),
])
def test_explicit_lowering_that_cannot_handle_the_call_is_a_clear_error(lowering, fn, xs, ws, kw, regex):
    with pytest.raises(ValueError, match=regex):
        fn(jnp.zeros(xs), jnp.zeros(ws), lowering=lowering, **kw)


def test_every_lowering_declares_its_interface():
    for name, module in dispatch.LOWERINGS.items():
        assert module.NAME == name and isinstance(module.DETERMINISTIC, bool)
        assert callable(module.refusal) and callable(module.lower)


@pytest.mark.parametrize("lowering,fn,kwargs", [
    ("phase", jconv.conv_transpose2d, dict(stride=(4, 8))),
    ("dilated", jconv.conv2d, dict(dilation=(4, 8), padding=8)),
])
def test_phase_lowerings_decline_past_max_phases(lowering, fn, kwargs):
    """32 phases > MAX_PHASES: an explicit request is refused with the reason, and auto takes another lowering."""
    from jconv.lowerings.common import MAX_PHASES

    x = jax.ShapeDtypeStruct((2, 8, 20, 20), jnp.float32)
    w = jax.ShapeDtypeStruct((8, 8, 3, 3), jnp.float32)
    with pytest.raises(ValueError, match=rf"lowering='{lowering}' cannot handle .* 32 phases, more than {MAX_PHASES}"):
        jconv.explain(fn, x, w, None, lowering=lowering, **kwargs)
    assert jconv.explain(fn, x, w, None, **kwargs).lowering != lowering


def test_first_call_of_a_large_stride_upsampler_stays_near_lax():
    """Trace and compile time of auto must not grow with the stride: a stride-16 2-D upsampler (256 phases) took
    31x lax's first call through the phase lowering (benchmarks/results/compile_time_cpu.md). Generous factor."""
    import time

    x, w = jnp.ones((2, 16, 8, 8)), jnp.full((16, 8, 32, 32), 0.01)

    def first_call(lowering):
        jax.clear_caches()
        f = lambda x, w: jnp.sum(jconv.conv_transpose2d(x, w, stride=16, padding=8, lowering=lowering) ** 2)
        start = time.perf_counter()
        jax.block_until_ready(jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, w))
        return time.perf_counter() - start

    lax_time = first_call("xla")
    assert first_call("auto") < 5 * max(lax_time, 0.5)
