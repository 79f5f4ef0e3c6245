"""Choosing a lowering: the ONE rule table, measured dispatch's hook, and explain().

`lowering="auto"` walks RULES top to bottom and takes the first rule whose condition holds, whose lowering
does not refuse the spec, and (in deterministic mode) whose lowering is deterministic. The evidence for each rule
is in docs/lowerings.md. With autotune on (jconv.autotune, or `lowering="autotune"`), a measured or cached choice
comes first (jconv.autotune). A user's explicit `lowering="<name>"` or `"<name>:<variant>"` skips both but is
still checked.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Callable, Optional, Tuple

import jax

from jconv import tuning
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
class Candidate:
    """One lowering and variant for a spec: refused (and why), or accepted (and, when measured, its time)."""

    lowering: str
    variant: Optional[str]  # None for a refused lowering
    refusal: Optional[str] = None
    time_s: Optional[float] = None

    def __str__(self) -> str:
        name = self.lowering if self.variant is None else f"{self.lowering}:{self.variant}"
        if self.refusal is not None:
            return f"{name}: refused: {self.refusal}"
        return f"{name}: {self.time_s * 1e3:.3g} ms" if self.time_s is not None else f"{name}: accepted"


@dataclasses.dataclass(frozen=True)
class Choice:
    """What dispatch picked for one call, and why; explain() also lists every candidate."""

    lowering: str
    reason: str
    platform: str
    spec: ConvSpec
    variant: Optional[str] = None
    candidates: Tuple[Candidate, ...] = ()
    entry: Optional[tuning.Entry] = dataclasses.field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        name = self.lowering if self.variant in (None, "default") else f"{self.lowering}:{self.variant}"
        lines = [f"{self.spec.describe()}", f"  -> lowering={name!r} on {self.platform}: {self.reason}"]
        lines += [f"     {'*' if (c.lowering, c.variant) == (self.lowering, self.variant) else ' '} {c}"
                  for c in self.candidates]
        return "\n".join(lines)


# Dispatch's platform names (RULES, explain) and jax.lax.platform_dependent's for each.
PLATFORMS = {"cpu": ("cpu",), "gpu": ("cuda", "rocm"), "tpu": ("tpu",)}
_ALIASES = {"cuda": "gpu", "rocm": "gpu"}


def _dispatch_platform(platform: str) -> str:
    return _ALIASES.get(platform, platform)


def _refusal(module, spec: ConvSpec, deterministic: bool) -> Optional[str]:
    if deterministic and not module.DETERMINISTIC:
        return "not deterministic, and deterministic mode is on"
    return module.refusal(spec)


def candidates(spec: ConvSpec, platform: str, deterministic: bool) -> Tuple[Candidate, ...]:
    """Every lowering and variant for `spec` on `platform`: the accepted ones, and the refused with their reason
    (a lowering autotune does not time there counts as refused, with its tuning_refusal)."""
    listed = []
    on_platform = dataclasses.replace(spec, platform=platform)
    for name, module in LOWERINGS.items():
        refusal = _refusal(module, spec, deterministic)
        not_tuned = getattr(module, "tuning_refusal", None)
        if refusal is None and not_tuned is not None and (why := not_tuned(on_platform)) is not None:
            refusal = f"not timed by autotune: {why}"
        if refusal is not None:
            listed.append(Candidate(name, None, refusal))
        else:
            listed += [Candidate(name, variant) for variant in module.variants(spec)]
    return tuple(listed)


def _candidate_lowering(name: str, variant: str):
    return LOWERINGS[name].lower


def _measured(spec: ConvSpec, platform: str, deterministic: bool) -> Tuple[Optional[Choice], str]:
    """autotune's choice, or None and why there is none."""
    accepted = [(c.lowering, c.variant) for c in candidates(spec, platform, deterministic) if c.refusal is None]
    local = _dispatch_platform(target_platform(dataclasses.replace(spec, platform=None)))
    decision = tuning.decide(spec, platform, local, deterministic, accepted, _candidate_lowering,
                               reference=(xla.NAME, xla.variants(spec)[0]))
    entry = decision.entry
    if entry is None:
        return None, decision.why
    if (entry.lowering, entry.variant) not in accepted:  # an entry this spec's batch or mode no longer allows
        return None, f"autotune's {entry.lowering}:{entry.variant} does not run here"
    return Choice(entry.lowering, decision.why, platform, spec, entry.variant, entry=entry), decision.why


def select(spec: ConvSpec, platform: Optional[str] = None, deterministic: Optional[bool] = None) -> Choice:
    """The lowering for `spec` on `platform` (default: the platform the spec is lowered for)."""
    platform = _dispatch_platform(platform or target_platform(spec))
    if deterministic is None:
        deterministic = are_deterministic_algorithms_enabled()
    if spec.lowering not in ("auto", "autotune"):
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
        variants = module.variants(spec)
        if spec.variant is not None and spec.variant not in variants:
            raise ValueError(f"{spec.op}: lowering={spec.lowering!r} has no variant {spec.variant!r} for this "
                             f"convolution; its variants here are {list(variants)}")
        return Choice(spec.lowering, "chosen explicitly by the caller", platform, spec, spec.variant or variants[0])
    prefix = ""
    if spec.lowering == "autotune" or tuning.is_enabled():
        choice, why = _measured(spec, platform, deterministic)
        if choice is not None:
            return choice
        prefix = f"{why}; the rules: "
    for rule in RULES:
        module = LOWERINGS[rule.lowering]
        if rule.platforms and platform not in rule.platforms:
            continue
        if deterministic and not module.DETERMINISTIC:
            continue
        if rule.when(spec) and module.refusal(spec) is None:
            return Choice(rule.lowering, prefix + rule.reason, platform, spec, module.variants(spec)[0])
    raise AssertionError("the last rule must accept every spec")  # pragma: no cover


def lower_auto(spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    """Lower `spec` with the lowering auto picks for the platform being lowered for (the inner convs of phase,
    dilated and planes)."""
    spec = dataclasses.replace(spec, variant=None)  # the outer lowering's variant is not the inner one's
    choice = select(spec)
    return LOWERINGS[choice.lowering].lower(dataclasses.replace(spec, variant=choice.variant), x, w)


# Lowerings whose traced code reads no platform (array code only): one trace serves every platform.
_SAME_ON_EVERY_PLATFORM = frozenset({"taps", "matmul", "im2col"})


def _branch(spec: ConvSpec, platform: str, deterministic: Optional[bool]) -> tuple:
    """(lowering, variant, the platform its trace depends on or None): equal branches are traced once."""
    # An explicit lowering was checked once by the caller (select raises or warns for it).
    if spec.lowering in ("auto", "autotune"):
        choice = select(spec, platform, deterministic)
        name, variant = choice.lowering, choice.variant
    else:
        name, variant = spec.lowering, spec.variant
    if name in _SAME_ON_EVERY_PLATFORM or (name == xla.NAME and not xla.pads_beforehand(spec, "cpu")):
        return (name, variant, None)
    return (name, variant, platform)


def _lower_branch(branch: tuple, spec: ConvSpec, x: jax.Array, w: jax.Array) -> jax.Array:
    name, variant, platform = branch
    return LOWERINGS[name].lower(dataclasses.replace(spec, variant=variant, platform=platform or spec.platform), x, w)


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
    spec = build_spec(*args, **kwargs)
    with tuning.measuring(False):  # explain never runs anything: a measured choice comes from the cache
        choice = select(spec, platform)
    deterministic = are_deterministic_algorithms_enabled()
    times = choice.entry.times_s if choice.entry is not None else {}
    dropped = choice.entry.dropped if choice.entry is not None else {}
    listed = tuple(dataclasses.replace(c, time_s=times.get(f"{c.lowering}:{c.variant}"),
                                       refusal=c.refusal or dropped.get(f"{c.lowering}:{c.variant}"))
                   for c in candidates(spec, choice.platform, deterministic))
    return dataclasses.replace(choice, candidates=listed)


def _report(fn, args, kwargs, measure: bool) -> tuning.Report:
    jax.clear_caches()  # jit reuses traces: every jconv call in fn must be traced again to be seen
    with tuning.collecting() as specs, tuning.measuring(measure):
        jax.eval_shape(fn, *args, **kwargs)
    report = tuning.Report()
    for spec in tuning.distinct(specs):
        explicit = spec.lowering not in ("auto", "autotune")
        with tuning.measuring(measure):
            choice = select(spec if explicit else dataclasses.replace(spec, lowering="autotune"))
        entry = choice.entry
        source = "explicit" if explicit else entry.source if entry else "rules"
        report.append(tuning.Row(spec, choice.lowering, choice.variant, source, entry.time_s if entry else None,
                                 entry.lax_time_s if entry else None))
    return report


def tune(fn, *args, **kwargs) -> tuning.Report:
    """Trace fn(*args, **kwargs) abstractly, measure every jconv convolution in it that the cache lacks (with the
    autotune mode and budget in effect), and return the report: per convolution, the chosen lowering and variant,
    its time, lax's, and the speed-up. Arrays may be jax.ShapeDtypeStruct. A call with an explicit lowering is
    listed as such, not tuned."""
    return _report(fn, args, kwargs, measure=True)


def report(fn, *args, **kwargs) -> tuning.Report:
    """tune()'s table without measuring: the cache's choice where it has one, else the rules'."""
    return _report(fn, args, kwargs, measure=False)
