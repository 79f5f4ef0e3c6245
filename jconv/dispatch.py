"""Choosing a lowering: the ONE rule table, and explain().

`lowering="auto"` walks RULES top to bottom and takes the first rule whose condition holds, whose lowering
accepts the spec, and (in deterministic mode) whose lowering is deterministic. Each rule cites the benchmark
result it came from. A user's explicit `lowering="<name>"` skips the table but is still checked.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, Optional

import jax

from jconv.determinism import are_deterministic_algorithms_enabled, is_deterministic_algorithms_warn_only_enabled
from jconv.lowerings import xla
from jconv.spec import ConvSpec

LOWERINGS = {m.NAME: m for m in (xla,)}
LOWERING_NAMES = tuple(LOWERINGS)


@dataclasses.dataclass(frozen=True)
class Rule:
    lowering: str
    platforms: tuple  # platforms the rule applies on; () means all
    when: Callable[[ConvSpec], bool]
    why: str  # the measurement behind the rule


def _always(spec: ConvSpec) -> bool:
    return True


RULES = (
    Rule("xla", (), _always,
         "fallback: lax.conv_general_dilated handles every configuration"),
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
