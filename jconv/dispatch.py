"""Choosing a lowering: the ONE rule table, and explain().

`lowering="auto"` walks RULES top to bottom and takes the first rule whose condition holds, whose lowering
accepts the spec, and (in deterministic mode) whose lowering is deterministic. Each rule cites the benchmark
result it came from. A user's explicit `lowering="<name>"` skips the table but is still checked.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Optional

import jax

from jconv.determinism import are_deterministic_algorithms_enabled, is_deterministic_algorithms_warn_only_enabled
from jconv.lowerings import dilated, grouped, im2col, matmul, phase, planes, taps, xla
from jconv.lowerings.pallas import depthwise as pallas_depthwise
from jconv.spec import ConvSpec

LOWERINGS = {m.NAME: m for m in (xla, taps, grouped, matmul, dilated, phase, planes, im2col, pallas_depthwise)}
LOWERING_NAMES = tuple(LOWERINGS)


@dataclasses.dataclass(frozen=True)
class Rule:
    lowering: str
    platforms: tuple  # platforms the rule applies on; () means all
    when: Callable[[ConvSpec], bool]
    why: str  # the measurement behind the rule


def _always(spec: ConvSpec) -> bool:
    return True


def _depthwise(spec: ConvSpec) -> bool:
    return not spec.transposed and spec.groups > 1 and spec.in_per_group == 1


def _grouped(spec: ConvSpec) -> bool:
    return not spec.transposed and spec.groups > 1 and spec.in_per_group > 1


def _pointwise(spec: ConvSpec) -> bool:
    return not spec.transposed and spec.groups == 1 and all(k == 1 for k in spec.kernel_size)


def _dense_3d(spec: ConvSpec) -> bool:
    return not spec.transposed and spec.ndim == 3 and not _depthwise(spec) and not _pointwise(spec)


def _transposed(spec: ConvSpec) -> bool:
    return spec.transposed


def _wide_dense_2d(spec: ConvSpec) -> bool:
    """Dense 2-D convs with at least 256 columns per im2col row and 14x14 outputs per sample: where im2col's
    chunked weight gradient measured faster than XLA's (the rule's numbers)."""
    return (not spec.transposed and spec.groups == 1 and spec.ndim == 2
            and math.prod(spec.kernel_size) * spec.in_channels >= 256 and math.prod(spec.out_spatial) >= 196)


# Read top to bottom; the first rule that applies, whose lowering accepts the spec (and, in deterministic mode,
# is deterministic), wins. Numbers are forward / forward+backward medians (ms) from benchmarks/results/cpu.md
# (python benchmarks/run.py; 2-core CPU, jax 0.10.2, torch 2.13 for reference).
# On GPU and TPU no jconv lowering has been measured yet (no accelerator was lent), so they keep XLA's own
# convolution until benchmarks/run.py has been run there.
RULES = (
    Rule("taps", ("cpu",), _depthwise,
         "depthwise on CPU: tap sum with hand-written derivatives; 8x128x56x56 3x3: lax 98 / 290, "
         "taps 2.5 / 12.6; ConvNeXt 7x7 8x96x56x56: lax 234 / 707, taps 7.5 / 39; Mamba conv1d k4: "
         "lax 160 / 25757, taps 2.7 / 29; RepLKNet 31x31 2x64x28x28: lax 410 / 1113, taps 6.6 / 24"),
    Rule("planes", ("cpu",), _dense_3d,
         "3-D (dense or grouped) on CPU: one 2-D conv over depth planes; 1x32x32^3 -> 32 3x3x3: lax 64 / 261, "
         "planes 26 / 87 (a development probe, g=4 2x64x16^3: lax 33 / 222, planes 9.3 / 28)"),
    Rule("grouped", ("cpu",), _grouped,
         "grouped on CPU: dense convs over one or a few merged groups; g=8 8x128x28x28 3x3: lax 15 / 710, "
         "grouped 4.0 / 11.4; g=32 4x256x28x28: lax 29 / 2455, grouped 7.0 / 12.5"),
    Rule("matmul", ("cpu",), _pointwise,
         "pointwise on CPU: one matmul; 8x256x28x28 -> 64 1x1: lax 6.0 / 17.0, matmul 2.5 / 9.3"),
    Rule("phase", ("cpu",), _transposed,
         "transposed on CPU: phase decomposition, no zeros, phases and gradients as matmuls; 8x64->32 28x28 k4 s2: "
         "lax 6.8 / 121, phase 3.4 / 9.7 (the VJP of the forward conv: 5.5 / 122)"),
    Rule("im2col", ("cpu",), _wide_dense_2d,
         "dense 2-D at stride 1 on CPU (planes' 2-D convs among them): lax's forward and input gradient, the "
         "weight gradient as chunked im2col matmuls; forward+backward, auto with and without this rule in one "
         "process (benchmarks/run.py's harness): ResNet 3x3 8x64x56x56 70-118 / 109-146 (xla), 8x64x56x56 d4 "
         "96-100 / 114-120, 8x128x28x28 56-62 / 81-83, 8x28x28x128 NHWC 53-54 / 76-78, 3-D U-Net 1x32x32^3 via "
         "planes 136-142 / 164-192; 8x256x14x14 62-70 / 67-68. Slower in probes, so left to xla: 1-D (4x8192x64 "
         "k3 d16 31-39 / 21-33), 3 or 16 input channels (4x64x64x3 7x7 11-13 / 7.9-10), 7x7 outputs (32x7x7x512 "
         "235-370 / 195-317)"),
    Rule("xla", (), _always,
         "lax.conv_general_dilated: the fastest measured path for dense 1-D/2-D convs on CPU (dilated included: "
         "space-to-batch measured 33 / 168 against lax's 25 / 66 for 8x64x56x56 d4; padding that lengthens the "
         "output is applied beforehand for the weight gradient: TCN causal conv1d lax 10.5 / 261, xla 9.8 / 33), "
         "and the only one measured on GPU/TPU so far"),
)


@dataclasses.dataclass(frozen=True)
class Choice:
    """What dispatch picked for one call, and why."""

    lowering: str
    reason: str
    platform: str
    spec: ConvSpec

    def __str__(self) -> str:
        return f"{self.spec.describe()}\n  -> lowering={self.lowering!r} on {self.platform}: {self.reason}"


def current_platform() -> str:
    return jax.default_backend()


def select(spec: ConvSpec, platform: Optional[str] = None, deterministic: Optional[bool] = None) -> Choice:
    """The lowering for `spec` on `platform` (default: JAX's default backend)."""
    platform = platform or current_platform()
    if deterministic is None:
        deterministic = are_deterministic_algorithms_enabled()
    if spec.lowering != "auto":
        module = LOWERINGS[spec.lowering]
        refusal = module.accepts(spec)
        if refusal is not None:
            raise ValueError(f"{spec.op}: lowering={spec.lowering!r} cannot handle this convolution: {refusal}")
        if deterministic and not module.DETERMINISTIC:
            message = (f"{spec.op}: lowering={spec.lowering!r} is not deterministic, but "
                       "jconv.use_deterministic_algorithms(True) is in effect")
            if not is_deterministic_algorithms_warn_only_enabled():
                raise RuntimeError(message)
            warnings.warn(message, RuntimeWarning, stacklevel=4)
        return Choice(spec.lowering, "chosen explicitly by the caller", platform, spec)
    for rule in RULES:
        module = LOWERINGS[rule.lowering]
        if rule.platforms and platform not in rule.platforms:
            continue
        if deterministic and not module.DETERMINISTIC:
            continue
        if rule.when(spec) and module.accepts(spec) is None:
            return Choice(rule.lowering, rule.why, platform, spec)
    raise AssertionError("the last rule must accept every spec")  # pragma: no cover


def lower_inner(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    """Lower a convolution that a lowering reduced its own to (phase, dilated, planes) with whatever auto picks."""
    return LOWERINGS[select(spec).lowering].lower(spec, x, w)


def explain(fn, input, weight, bias=None, *args, platform: Optional[str] = None, **kwargs) -> Choice:
    """What `fn(input, weight, bias, *args, **kwargs)` would run, without running it.

    `fn` is a jconv function (e.g. jconv.conv2d); arrays may be jax.ShapeDtypeStruct. Print the result for a
    one-line description of the convolution and the chosen lowering with the rule's reason.
    """
    build_spec = getattr(fn, "build_spec", None)
    if build_spec is None:
        raise TypeError(f"explain: expected a jconv convolution function, but got {fn!r}")
    spec = build_spec(input, weight, bias, *args, **kwargs)
    return select(spec, platform)
