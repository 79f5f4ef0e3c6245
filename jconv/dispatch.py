"""Choosing a lowering: the ONE rule table, and explain().

`lowering="auto"` walks RULES top to bottom and takes the first rule whose condition holds, whose lowering
does not refuse the spec, and (in deterministic mode) whose lowering is deterministic. The evidence for each rule
is in docs/lowerings.md. A user's explicit `lowering="<name>"` skips the table but is still checked.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Callable, Optional

import jax

from jconv.determinism import are_deterministic_algorithms_enabled, is_deterministic_algorithms_warn_only_enabled
from jconv import lowerings
from jconv.lowerings import dilated, grouped, im2col, matmul, phase, planes, taps, xla
from jconv.lowerings.common import target_platform
from jconv.lowerings.pallas import depthwise as pallas_depthwise
from jconv.spec import ConvSpec

LOWERINGS = {m.NAME: m for m in (xla, taps, grouped, matmul, dilated, phase, planes, im2col, pallas_depthwise)}
LOWERING_NAMES = lowerings.NAMES
assert tuple(LOWERINGS) == LOWERING_NAMES, "jconv.lowerings.NAMES must list every lowering module"


@dataclasses.dataclass(frozen=True)
class Rule:
    lowering: str
    platforms: tuple  # platforms the rule applies on; () means all
    when: Callable[[ConvSpec], bool]
    reason: str  # what it does, and where its evidence is


def _always(spec: ConvSpec) -> bool:
    return True


def _depthwise(spec: ConvSpec) -> bool:
    return not spec.transposed and spec.groups > 1 and spec.is_depthwise


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
    chunked weight gradient measured faster than XLA's on two CPUs, and slower on a third (docs/lowerings.md,
    "Retired rules")."""
    return (not spec.transposed and spec.groups == 1 and spec.ndim == 2
            and math.prod(spec.kernel_size) * spec.in_channels >= 256 and math.prod(spec.out_spatial) >= 196)


# Read top to bottom; the first rule that applies, whose lowering does not refuse the spec (and, in deterministic
# mode, is deterministic), wins. The measurements behind each rule: docs/lowerings.md, "Auto's rules". On GPU and
# TPU no jconv lowering has been measured yet, so they keep XLA's own convolution.
RULES = (
    Rule("taps", ("cpu",), _depthwise, "depthwise on CPU: tap sum with hand-written derivatives"),
    Rule("planes", ("cpu",), _dense_3d, "3-D on CPU: one 2-D conv over depth planes"),
    Rule("grouped", ("cpu",), _grouped, "grouped on CPU: dense convs over one or a few merged groups"),
    Rule("matmul", ("cpu",), _pointwise, "pointwise on CPU: one matmul"),
    Rule("phase", ("cpu",), _transposed,
         "transposed on CPU: phase decomposition, no zeros, phases and gradients as matmuls"),
    Rule("xla", (), _always, "lax.conv_general_dilated: the fastest measured path for the remaining convs on CPU, "
         "and the only one measured on GPU/TPU so far"),
)


# Rules taken out of the table because they lost to lax on a machine they were not fitted to, kept so that
# benchmarks/rule_ab.py --restore can measure them again (docs/lowerings.md, "Retired rules").
RETIRED_RULES = (
    Rule("im2col", ("cpu",), _wide_dense_2d,
         "dense 2-D at stride 1 on CPU: lax's forward and input gradient, the weight gradient as chunked im2col "
         "matmuls"),
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


# Dispatch's platform names (RULES, explain) and jax.lax.platform_dependent's for each.
PLATFORMS = {"cpu": ("cpu",), "gpu": ("cuda", "rocm"), "tpu": ("tpu",)}
_ALIASES = {"cuda": "gpu", "rocm": "gpu"}


def select(spec: ConvSpec, platform: Optional[str] = None, deterministic: Optional[bool] = None) -> Choice:
    """The lowering for `spec` on `platform` (default: the platform the spec is lowered for)."""
    platform = _ALIASES.get(platform, platform) or target_platform(spec)
    if deterministic is None:
        deterministic = are_deterministic_algorithms_enabled()
    if spec.lowering != "auto":
        module = LOWERINGS[spec.lowering]
        refusal = module.refusal(spec)
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
        if rule.when(spec) and module.refusal(spec) is None:
            return Choice(rule.lowering, rule.reason, platform, spec)
    raise AssertionError("the last rule must accept every spec")  # pragma: no cover


def lower_auto(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    """Lower `spec` with the lowering auto picks for the platform being lowered for (the inner convs of phase,
    dilated and planes)."""
    return LOWERINGS[select(spec).lowering].lower(spec, x, w)


# Lowerings whose traced code reads no platform (array code only): one trace serves every platform.
_SAME_ON_EVERY_PLATFORM = frozenset({"taps", "matmul", "im2col"})


def _branch(spec: ConvSpec, platform: str, deterministic: Optional[bool]) -> tuple:
    """(lowering, the platform its trace depends on or None): equal branches are traced once."""
    # An explicit lowering was checked once by the caller (select raises or warns for it).
    name = spec.lowering if spec.lowering != "auto" else select(spec, platform, deterministic).lowering
    if name in _SAME_ON_EVERY_PLATFORM or (name == xla.NAME and not xla.pads_beforehand(spec, "cpu")):
        return (name, None)
    return (name, platform)


def _lower_branch(branch: tuple, spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    name, platform = branch
    return LOWERINGS[name].lower(spec if platform is None else dataclasses.replace(spec, platform=platform), x, w)


def lower(spec: ConvSpec, x: jax.Array, w: jax.Array, deterministic: Optional[bool] = None) -> jax.Array:
    """The convolution lowered for whichever platform it is compiled for, not the one tracing it (exporting for
    a GPU from a CPU host, or arrays on a non-default device): each platform's choice is one branch of
    jax.lax.platform_dependent, which compiles only the branch of the platform at hand, with no conditional left."""
    branches = {p: _branch(spec, p, deterministic) for p in PLATFORMS}
    if len(set(branches.values())) == 1:
        return _lower_branch(branches["cpu"], spec, x, w)
    functions = {b: functools.partial(_lower_branch, b, spec) for b in set(branches.values())}
    per_platform = {name: functions[branches[p]] for p in ("cpu", "gpu") for name in PLATFORMS[p]}
    # Any other platform (TPU among them) gets the rules of a platform nothing was measured on.
    return jax.lax.platform_dependent(x, w, default=functions[branches["tpu"]], **per_platform)


lowerings.set_inner_lowering(lower_auto)


def explain(fn, *args, platform: Optional[str] = None, **kwargs) -> Choice:
    """What `fn(*args, **kwargs)` would run, without running it.

    `fn` is a jconv function, called with its own arguments (jconv.conv2d with PyTorch's, or
    jconv.conv_general_dilated with lax's); arrays may be jax.ShapeDtypeStruct. Print the result for a one-line
    description of the convolution and the chosen lowering with the rule's reason.
    """
    build_spec = getattr(fn, "build_spec", None)
    if build_spec is None:
        raise TypeError(f"explain: expected a jconv convolution function, but got {fn!r}")
    return select(build_spec(*args, **kwargs), platform)
