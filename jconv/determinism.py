"""Deterministic mode, PyTorch's torch.use_deterministic_algorithms for JAX.

Two things make a jconv program bitwise reproducible:

1. jconv's dispatch picks only lowerings that declare DETERMINISTIC (no atomics, fixed reduction order).
2. XLA is told to be deterministic. The flag is `--xla_gpu_deterministic_ops=true`. XLA has two:
   - `xla_gpu_exclude_nondeterministic_ops` replaces non-deterministic ops (scatter, cuDNN convolution algorithms
     that use atomics, ...) with deterministic ones, but keeps autotuning, so two processes can still compile
     different GEMM/fusion kernels, with different summation orders.
   - `xla_gpu_deterministic_ops` ("Guarantees run-to-run determinism on GPU") does the same and also switches off
     the GEMM-fusion autotuner, so every compilation picks the same kernels. jconv's lowerings turn
     convolutions into GEMMs, so this is the flag that covers them. Its cost on a GPU is in docs/devices.md.
   Both are GPU options; on CPU, XLA's convolutions and reductions are already deterministic and the flag is
   accepted and ignored.

XLA reads XLA_FLAGS once, when the first backend starts. Enabling after that cannot take effect, so it raises
(or warns, with warn_only=True) instead of failing silently. `deterministic_jit` is the scoped alternative: it
passes the option to one jitted function's compilation and works at any time.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings
from typing import Any, Callable, Dict

import jax

# flag name -> value jconv sets.
DETERMINISM_FLAGS: Dict[str, str] = {"xla_gpu_deterministic_ops": "true"}
ENV_VAR = "JCONV_DETERMINISTIC"

_state = {"enabled": False, "warn_only": False, "added": ()}  # "added": flags jconv itself put in XLA_FLAGS
_scoped = threading.local()


def _backends_started() -> bool:
    from jax._src import xla_bridge  # no public API says whether XLA has read its flags yet

    started = getattr(xla_bridge, "backends_are_initialized", None)
    return started() if started is not None else bool(getattr(xla_bridge, "_backends", {}))


def _parse_flags(text: str) -> Dict[str, str]:
    """XLA_FLAGS as {name: value}; a bare --flag means true."""
    flags = {}
    for token in text.split():
        name, _, value = token.lstrip("-").partition("=")
        flags[name] = value or "true"
    return flags


def _flags_in_effect() -> bool:
    flags = _parse_flags(os.environ.get("XLA_FLAGS", ""))
    return all(flags.get(name, "").lower() in (value, "1") for name, value in DETERMINISM_FLAGS.items())


def _add_flags() -> None:
    current = os.environ.get("XLA_FLAGS", "")
    user = _parse_flags(current)
    added = []
    for name, value in DETERMINISM_FLAGS.items():
        if name in user:
            if user[name].lower() not in (value, "1"):
                warnings.warn(
                    f"jconv.use_deterministic_algorithms(True): XLA_FLAGS sets --{name}={user[name]} explicitly; "
                    "jconv leaves it as it is, so XLA itself will not be deterministic on GPU",
                    RuntimeWarning, stacklevel=3,
                )
            continue
        added.append(f"--{name}={value}")
    if added:
        os.environ["XLA_FLAGS"] = " ".join([current.strip(), *added]).strip()
    _state["added"] = tuple(_state["added"]) + tuple(added)


def _remove_added_flags() -> None:
    added = set(_state["added"])
    tokens = [t for t in os.environ.get("XLA_FLAGS", "").split() if t not in added]
    if tokens:
        os.environ["XLA_FLAGS"] = " ".join(tokens)
    else:
        os.environ.pop("XLA_FLAGS", None)
    _state["added"] = ()


def use_deterministic_algorithms(mode: bool, *, warn_only: bool = False) -> None:
    """Make jconv (and XLA) deterministic, like torch.use_deterministic_algorithms.

    Call it before the first JAX computation (or set JCONV_DETERMINISTIC=1 before importing jconv): XLA reads
    its flags once, when its backend starts. Called later, it raises RuntimeError, or with warn_only=True warns
    and still restricts jconv's own dispatch to deterministic lowerings. With warn_only=True, explicitly asking
    for a non-deterministic lowering warns instead of raising, as in PyTorch.
    """
    if not isinstance(mode, bool):
        raise TypeError(f"use_deterministic_algorithms: mode must be a bool, but got {mode!r}")
    if not isinstance(warn_only, bool):
        raise TypeError(f"use_deterministic_algorithms: warn_only must be a bool, but got {warn_only!r}")
    if _backends_started() and mode != _flags_in_effect():
        action = "enable" if mode else "disable"
        message = (
            f"jconv.use_deterministic_algorithms({mode}) was called after JAX's backend started, so it cannot "
            f"{action} XLA's determinism flag ({', '.join('--' + n for n in DETERMINISM_FLAGS)}): XLA reads "
            "XLA_FLAGS only once. Call it before the first JAX computation, set JCONV_DETERMINISTIC=1 before "
            "importing jconv, or use jconv.deterministic_jit(f) for one function."
        )
        if not warn_only:
            raise RuntimeError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    elif not _backends_started():
        if mode:
            _add_flags()
        else:
            _remove_added_flags()
    _state["enabled"] = mode
    _state["warn_only"] = warn_only


def are_deterministic_algorithms_enabled() -> bool:
    """True while use_deterministic_algorithms(True) is in effect, or inside a deterministic_jit trace."""
    return _state["enabled"] or getattr(_scoped, "depth", 0) > 0


def is_deterministic_algorithms_warn_only_enabled() -> bool:
    return _state["warn_only"]


@contextlib.contextmanager
def _scoped_determinism():
    _scoped.depth = getattr(_scoped, "depth", 0) + 1
    try:
        yield
    finally:
        _scoped.depth -= 1


def deterministic_jit(fun: Callable = None, **jit_kwargs: Any):
    """jax.jit for one function, compiled with XLA's determinism option and deterministic jconv lowerings.

    Unlike use_deterministic_algorithms it touches no process state and works after the backend started.
    Accepts jax.jit's keyword arguments; `compiler_options` given here are merged (the caller's win).
    """
    if fun is None:
        return functools.partial(deterministic_jit, **jit_kwargs)
    options = {name: value == "true" for name, value in DETERMINISM_FLAGS.items()}
    options.update(jit_kwargs.pop("compiler_options", None) or {})

    @functools.wraps(fun)
    def traced(*args, **kwargs):
        with _scoped_determinism():  # jit traces fun inside this call: dispatch sees the mode then
            return fun(*args, **kwargs)

    return jax.jit(traced, compiler_options=options, **jit_kwargs)


def _enable_from_env() -> None:
    """JCONV_DETERMINISTIC=1 (or true/yes) enables the mode at import; 'warn' enables it with warn_only.

    A setting that cannot be honoured (an unknown value, or JAX's backend already started) warns instead of
    raising: an exception here would make jconv unimportable, and with it the call that turns the mode off."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return
    if value not in ("1", "true", "yes", "warn"):
        warnings.warn(f"{ENV_VAR}={os.environ[ENV_VAR]!r} is ignored: expected 1/true/yes, warn, or 0/false/no",
                      RuntimeWarning, stacklevel=3)
        return
    # warn_only here makes a late setting warn (and still restrict dispatch) instead of raising.
    use_deterministic_algorithms(True, warn_only=True)
    _state["warn_only"] = value == "warn"
