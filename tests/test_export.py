"""GPU and TPU without one: every lowering exports for cuda and tpu from this CPU host (jax.export lowers for a
platform the machine does not have), each platform gets its own choice, and the Pallas kernels lower to Triton.

What this cannot show: register pressure, PTX compilation, or speed; those need a GPU
(benchmarks/pallas_depthwise_gpu.py).
"""

from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import jconv
from jconv.lowerings.pallas import depthwise
from jconv.lowerings.pallas.depthwise import BLOCK_SIZES
from parity import accepted, jconv_fn, to_layout
from test_parity import GRID, LOWERINGS

TRITON = "__gpu$xla.gpu.triton"
# Pallas' Triton kernels are a custom call that export refuses unless told it is expected.
ALLOW_TRITON = [export.DisabledSafetyCheck.custom_call(TRITON)]
PLATFORMS = ("cpu", "cuda", "tpu")


def module(fn, platform, *args) -> str:
    """The StableHLO that `fn` exports to for `platform`, without source locations."""
    text = export.export(jax.jit(fn), platforms=[platform], disabled_checks=ALLOW_TRITON)(*args).mlir_module()
    return re.sub(r"\s*loc\([^()]*(\([^()]*\)[^()]*)*\)|^#loc.*$", "", text, flags=re.M)


def ops(text: str) -> collections.Counter:
    """How many of each StableHLO op a module holds, leaving out what jax.lax.platform_dependent adds and XLA
    folds away: a `case` on a constant index (holding only the lowered platform's branch) and, under grad, the
    zeros (`broadcast_in_dim`) that stand for the other branches' residuals."""
    return collections.Counter(op for op in re.findall(r"stablehlo\.(\w+)", text)
                               if op not in ("case", "return", "constant", "broadcast_in_dim"))


def structs(*arrays, dtype=jnp.float32):
    return tuple(None if a is None else jax.ShapeDtypeStruct(a.shape, dtype) for a in arrays)


def call(case, lowering):
    fn, kwargs = jconv_fn(case), case.jconv_kwargs()
    return lambda x, w, b: fn(to_layout(case, x), w, b, lowering=lowering, **kwargs)


def forward_and_grads(case, lowering):
    """Output and the input, weight (and bias) gradients of a scalar loss, as one function."""
    f = call(case, lowering)

    def run(x, w, b):
        loss = lambda *a: jnp.sum(f(*a) ** 2) if b is not None else jnp.sum(f(a[0], a[1], None) ** 2)  # noqa
        args = (x, w, b) if b is not None else (x, w)
        return f(x, w, b), jax.grad(loss, argnums=tuple(range(len(args))))(*args)

    return run


def export_cases(lowering, count=2):
    """`count` of the parity grid's cases the lowering accepts, spread over the grid (1-D to 3-D, forward to
    transposed)."""
    cases = [c for c in GRID if accepted(c, lowering, jnp.float32)]
    return cases[::max(1, len(cases) // count)][:count]


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("lowering", LOWERINGS)
def test_every_lowering_exports_forward_and_gradients(lowering, platform):
    cases = export_cases(lowering)
    assert cases
    for case in cases:
        x, w, b = case.arrays()
        assert "func.func public @main" in module(forward_and_grads(case, lowering), platform, *structs(x, w, b))


AUTO_CASES = {  # (function, input shape, weight shape, kwargs): a case per CPU rule, and one auto leaves to lax
    "depthwise": (jconv.conv2d, (2, 8, 12, 12), (8, 1, 3, 3), dict(padding=1, groups=8)),
    "grouped": (jconv.conv2d, (2, 8, 12, 12), (8, 2, 3, 3), dict(padding=1, groups=4)),
    "pointwise": (jconv.conv2d, (2, 8, 12, 12), (16, 8, 1, 1), {}),
    "transposed": (jconv.conv_transpose2d, (2, 8, 6, 6), (8, 4, 4, 4), dict(stride=2, padding=1)),
    "3-D": (jconv.conv3d, (1, 4, 6, 6, 6), (4, 4, 3, 3, 3), dict(padding=1)),
    "dense": (jconv.conv2d, (2, 4, 12, 12), (8, 4, 3, 3), dict(padding=1)),
}


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("name", AUTO_CASES)
def test_auto_exports_what_explain_names_for_each_platform(name, platform):
    """auto's module for a platform is the module of the lowering explain() names for that platform, forward and
    backward; so on this CPU host, a module for cuda or tpu holds lax's convolution, not the CPU's choice."""
    fn, xs, ws, kw = AUTO_CASES[name]
    x, w = jax.ShapeDtypeStruct(xs, jnp.float32), jax.ShapeDtypeStruct(ws, jnp.float32)
    named = jconv.explain(fn, x, w, platform=platform, **kw).lowering

    def program(lowering):
        return jax.value_and_grad(lambda x, w: jnp.sum(fn(x, w, lowering=lowering, **kw) ** 2), argnums=(0, 1))

    auto = ops(module(program("auto"), platform, x, w))
    assert auto == ops(module(program(named), platform, x, w))
    if platform != "cpu":
        assert named == "xla" and auto["convolution"] > 0
    elif named != "xla":  # the CPU lowerings it names differ from lax's program
        assert auto != ops(module(program("xla"), platform, x, w))


def test_one_traced_function_holds_each_platforms_choice_until_it_is_lowered():
    """The jaxpr holds both branches; each platform's module only its own (cpu: the tap sum, no convolution)."""
    fn, xs, ws, kw = AUTO_CASES["depthwise"]
    x, w = jax.ShapeDtypeStruct(xs, jnp.float32), jax.ShapeDtypeStruct(ws, jnp.float32)
    traced = jax.jit(lambda x, w: fn(x, w, **kw)).trace(x, w)
    assert "platform_index" in str(traced.jaxpr) and "conv_general_dilated" in str(traced.jaxpr)
    assert ops(module(lambda x, w: fn(x, w, **kw), "cpu", x, w))["convolution"] == 0
    assert ops(module(lambda x, w: fn(x, w, **kw), "cuda", x, w))["convolution"] == 1


# Real layer shapes for the Pallas kernels: (name, function, input shape, weight shape, kwargs).
PALLAS_LAYERS = [
    ("ConvNeXt 7x7", jconv.conv2d, (64, 96, 56, 56), (96, 1, 7, 7), dict(padding=3, groups=96)),
    ("MobileNetV2 3x3", jconv.conv2d, (64, 384, 28, 28), (384, 1, 3, 3), dict(padding=1, groups=384)),
    ("RepLKNet 31x31", jconv.conv2d, (32, 128, 56, 56), (128, 1, 31, 31), dict(padding=15, groups=128)),
    ("causal conv1d k4", jconv.conv1d, (16, 4096, 2048), (4096, 1, 4), dict(padding=3, groups=4096)),
]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bfloat16", "float32"])
@pytest.mark.parametrize("layer", PALLAS_LAYERS, ids=[layer[0] for layer in PALLAS_LAYERS])
def test_pallas_kernels_lower_to_triton_for_cuda(layer, dtype):
    """Forward, input gradient and weight gradient each lower to a Triton kernel for cuda; for cpu the same
    function runs the kernels in interpret mode (no Triton call)."""
    _, fn, xs, ws, kw = layer
    x, w = jax.ShapeDtypeStruct(xs, dtype), jax.ShapeDtypeStruct(ws, dtype)
    f = lambda x, w: fn(x, w, lowering="pallas", **kw)  # noqa: E731
    assert module(f, "cuda", x, w).count(TRITON) == 1
    for argnum in (0, 1):
        grad = jax.grad(lambda x, w: jnp.sum(f(x, w).astype(jnp.float32)), argnums=argnum)
        assert module(grad, "cuda", x, w).count(TRITON) == 1, f"gradient {argnum}"
    assert TRITON not in module(f, "cpu", x, w)


def _layer_variants():
    """Every block-size variant, on the first layer whose kernel its table serves."""
    pairs = []
    for variant in BLOCK_SIZES:
        for layer in PALLAS_LAYERS:
            _, fn, xs, ws, kw = layer
            spec = fn.build_spec(jax.ShapeDtypeStruct(xs, jnp.bfloat16), jax.ShapeDtypeStruct(ws, jnp.bfloat16),
                                 None, **kw)
            if variant in depthwise.variants(spec):
                pairs.append((layer, variant))
                break
    return pairs


@pytest.mark.parametrize("layer,variant", _layer_variants(), ids=lambda v: v if isinstance(v, str) else v[0])
def test_every_pallas_block_size_variant_lowers_to_triton_for_cuda(layer, variant):
    """The block sizes autotune times on a GPU: each builds its three kernels for cuda (bfloat16)."""
    _, fn, xs, ws, kw = layer
    x, w = jax.ShapeDtypeStruct(xs, jnp.bfloat16), jax.ShapeDtypeStruct(ws, jnp.bfloat16)
    f = lambda x, w: fn(x, w, lowering=f"pallas:{variant}", **kw)  # noqa: E731
    grads = jax.grad(lambda x, w: jnp.sum(f(x, w).astype(jnp.float32)), argnums=(0, 1))
    assert module(f, "cuda", x, w).count(TRITON) == 1 and module(grads, "cuda", x, w).count(TRITON) == 2


def test_every_pallas_block_size_variant_has_a_layer_that_lowers_it():
    assert {variant for _, variant in _layer_variants()} == set(BLOCK_SIZES)


def test_explain_takes_jaxs_platform_names():
    x, w = np.zeros((1, 4, 8, 8), np.float32), np.zeros((4, 1, 3, 3), np.float32)
    for platform in ("cuda", "rocm", "gpu"):
        assert jconv.explain(jconv.conv2d, x, w, groups=4, platform=platform).lowering == "xla"
    assert jconv.explain(jconv.conv2d, x, w, groups=4, platform="cpu").lowering == "taps"
