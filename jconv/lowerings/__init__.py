"""Lowerings: each module turns a ConvSpec and arrays into the convolution's output.

Every lowering module has the same interface:

    NAME: str                       the name users pass as lowering=...
    DETERMINISTIC: bool             bitwise-reproducible on every platform it runs on (all of today's are;
                                    deterministic mode's filter in dispatch is there for one that is not)
    refusal(spec) -> str | None     why it cannot handle the spec; None if it can
    variants(spec) -> tuple[str]    the named forms it can take for the spec, the one its rule picks first;
                                    spec.variant says which runs (None: the first)
    tuning_refusal(spec)            optional: why autotune should not time it for the spec (None: it should)
    lower(spec, x, w) -> y          x batched, in the spec's layout, already padded for non-zero padding modes
                                    (zeros padding is the lowering's job, from spec.lowering_padding); w in
                                    PyTorch's layout; y batched, in the spec's layout, without bias

Adding a lowering is one module here, its name in NAMES and one entry in jconv.dispatch.
"""

from __future__ import annotations

from typing import Callable, Optional

# Every lowering's NAME, in the order explain() and the docs list them (jconv.dispatch checks it against the
# modules); here so that argument checks (jconv.spec) can name them without importing the lowerings.
NAMES = ("xla", "taps", "grouped", "matmul", "dilated", "phase", "planes", "im2col", "pallas")

_lower_auto: Optional[Callable] = None


def set_inner_lowering(lower_auto: Callable) -> None:
    """Installs auto's lowering for lower_inner (jconv.dispatch does, once): lowerings never import dispatch,
    which imports them all."""
    global _lower_auto
    _lower_auto = lower_auto


def lower_inner(spec, x, w):
    """Lower a convolution that a lowering reduced its own to (phase, dilated, planes) with whatever auto picks."""
    return _lower_auto(spec, x, w)
