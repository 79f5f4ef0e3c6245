"""Measured dispatch: time every lowering and variant that accepts a convolution on the device at hand, keep the
fastest, and remember it in a cache file shared by processes.

`jconv.autotune(True)` (or JCONV_AUTOTUNE=1, or lowering="autotune" on one call) makes dispatch ask this module
before its rules. On a miss, at trace time, each candidate runs on random arrays of the spec's shapes and dtype,
forward and both gradients (mode="train") or forward only (mode="forward"), round-robin, until the fastest is
clear or the budget is spent; a candidate that fails to compile, raises, or disagrees with lax's convolution
beyond the dtype's tolerance is dropped with its reason. The cache is keyed by the convolution, the mode, the
platform, the device kind and the jax, jaxlib and jconv versions (docs/autotune.md).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
import math
import os
import platform as _host
import statistics
import tempfile
import time
import warnings
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from jconv._version import __version__
from jconv.spec import ConvSpec

logger = logging.getLogger("jconv.autotune")

ENV_VAR = "JCONV_AUTOTUNE"
CACHE_DIR_ENV_VAR = "JCONV_CACHE_DIR"
CACHE_FILE = "autotune-v1.json"
MODES = ("train", "forward")
DEFAULT_BUDGET_S = 20.0  # per spec: a ceiling on the timing rounds, not counting the first run of each candidate

# Timing: at least MIN_ROUNDS round-robin samples per candidate, at most MAX_ROUNDS; a sample is the mean of
# enough back-to-back runs to last about SAMPLE_S (at most MAX_REPS), so that sub-millisecond candidates are not
# ranked by timer and scheduler noise; after the first round a candidate slower than the fastest by PRUNE_FACTOR
# cannot win within run-to-run noise and is not run again; the rounds stop early once the fastest candidate's
# slowest sample beats every other's median (docs/autotune.md).
MIN_ROUNDS = 5
MAX_ROUNDS = 15
SAMPLE_S = 0.02
MAX_REPS = 64
PRUNE_FACTOR = 2.0

# Norm-wise relative error to lax's results beyond which a candidate is wrong, by dtype: a few times the error
# two correct summation orders differ by.
TOLERANCE = {"float64": 1e-9, "complex128": 1e-9, "float32": 1e-4, "complex64": 1e-4, "float16": 1e-2,
             "bfloat16": 5e-2}


def _env_enabled() -> bool:
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value not in ("1", "true", "yes"):
        warnings.warn(f"{ENV_VAR}={os.environ[ENV_VAR]!r} is ignored: expected 1/true/yes or 0/false/no",
                      RuntimeWarning, stacklevel=3)
        return False
    return True


_state = {"enabled": _env_enabled(), "mode": "train", "cache_dir": None, "budget_s": None, "measure": True}


class autotune:  # noqa: N801: used like a function, as torch.set_grad_enabled is
    """Switch measured dispatch on (or off) for the process; as a context manager, restore the previous state on
    exit.

    enabled: measure each convolution's lowerings on a cache miss (True) or use the rules (False).
    mode: "train" times forward plus both gradients, what a training step pays; "forward" the forward alone.
    cache_dir: where the cache file lives (default: JCONV_CACHE_DIR, else the user's cache directory).
    budget_s: seconds of timing rounds per convolution (default DEFAULT_BUDGET_S).

    Functions already traced keep the lowering chosen when they were traced: switch it before jit traces them.
    """

    def __init__(self, enabled: bool = True, *, mode: str = "train", cache_dir=None,
                 budget_s: Optional[float] = None):
        if not isinstance(enabled, bool):
            raise TypeError(f"autotune: enabled must be a bool, but got {enabled!r}")
        if mode not in MODES:
            raise ValueError(f"autotune: mode must be one of {list(MODES)}, but got {mode!r}")
        if budget_s is not None and (isinstance(budget_s, bool) or not isinstance(budget_s, (int, float))
                                     or not budget_s > 0):
            raise ValueError(f"autotune: budget_s must be a positive number of seconds, but got {budget_s!r}")
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise TypeError(f"autotune: cache_dir must be a path, but got {cache_dir!r}")
        self._previous = dict(_state)
        _state.update(enabled=enabled, mode=mode, cache_dir=None if cache_dir is None else os.fspath(cache_dir),
                      budget_s=budget_s)

    def __enter__(self) -> "autotune":
        return self

    def __exit__(self, *exc) -> None:
        _state.clear()
        _state.update(self._previous)


def is_enabled() -> bool:
    return _state["enabled"]


def state_key() -> tuple:
    """What of the autotune state a traced program depends on (part of jconv's own compilation key)."""
    return (_state["enabled"], _state["mode"], cache_path(), _state["measure"])


@contextlib.contextmanager
def measuring(measure: bool):
    previous = _state["measure"]
    _state["measure"] = measure
    try:
        yield
    finally:
        _state["measure"] = previous


# --- the cache file -----------------------------------------------------------------------------------------


def cache_path() -> str:
    directory = _state["cache_dir"] or os.environ.get(CACHE_DIR_ENV_VAR) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "jconv")
    return os.path.join(directory, CACHE_FILE)


def _read(path: str) -> Dict[str, dict]:
    """The file's entries; {} for a missing file, and a warning (never an error) for an unreadable one."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        entries = data["entries"]
        if not isinstance(entries, dict):
            raise ValueError("'entries' is not an object")
        return entries
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"jconv autotune: ignoring the unreadable cache file {path} ({type(e).__name__}: {e})",
                      RuntimeWarning, stacklevel=4)
        return {}


_file_memo: Dict[str, tuple] = {}  # path -> (the file's stat when read, its entries)


def _read_current(path: str) -> Dict[str, dict]:
    """_read(path), parsed again only when the file changed (dispatch looks entries up on every trace)."""
    try:
        stat = os.stat(path)
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    except OSError:
        signature = None
    memo = _file_memo.get(path)
    if memo is None or memo[0] != signature or signature is None:
        memo = _file_memo[path] = (signature, _read(path))
    return memo[1]


@contextlib.contextmanager
def _locked(path: str):
    """An exclusive lock on path's sibling lock file, so that concurrent writers merge instead of overwriting each
    other (where fcntl exists; elsewhere the atomic replace alone keeps the file whole)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover: not on POSIX
        yield
        return
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write(path: str, update: Callable[[Dict[str, dict]], Dict[str, dict]]) -> None:
    """Replace the file with update(its entries), atomically and under the lock."""
    with _locked(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a corrupt file was reported when it was read
            entries = update(_read(path))
        fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".autotune-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "entries": entries}, f, indent=1, sort_keys=True)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            raise


class AutotuneCache:
    """The cache file at `path`: len(), entries(), clear(), and export/merge to ship one tuned cache to every
    host of a cluster (entries carry their device kind and versions, so a host uses only its own)."""

    def __init__(self, path: str):
        self.path = path

    def entries(self) -> Dict[str, dict]:
        return _read(self.path)

    def __len__(self) -> int:
        return len(self.entries())

    def __repr__(self) -> str:
        return f"AutotuneCache({self.path!r}, {len(self)} entries)"

    def clear(self) -> None:
        _write(self.path, lambda entries: {})
        _memo.clear()

    def export(self, path) -> int:
        """Write every entry to the JSON file `path`; returns how many."""
        entries = self.entries()
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "entries": entries}, f, indent=1, sort_keys=True)
        return len(entries)

    def merge(self, path) -> int:
        """Add the entries of an exported file (an unreadable one raises); returns how many were added or
        replaced."""
        with open(path, encoding="utf-8") as f:
            incoming = json.load(f)["entries"]
        _write(self.path, lambda entries: {**entries, **incoming})
        _memo.clear()
        return len(incoming)


def autotune_cache(cache_dir=None) -> AutotuneCache:
    """The autotune cache in use (or the one in `cache_dir`)."""
    return AutotuneCache(os.path.join(os.fspath(cache_dir), CACHE_FILE) if cache_dir is not None else cache_path())


# --- keys ---------------------------------------------------------------------------------------------------


def device_kind(platform: str) -> str:
    """The GPU's or TPU's name; on CPU the processor model, which XLA's device kind does not name."""
    if platform == "cpu":
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("model name"):
                        return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return _host.processor() or _host.machine()
    return jax.devices(platform)[0].device_kind


def _versions() -> str:
    return f"jax={jax.__version__} jaxlib={jaxlib.__version__} jconv={__version__}"


def _spec_key(spec: ConvSpec) -> str:
    """The convolution as the lowerings see it: every field but the call's name, the lowering, the variant, the
    platform, and the bias (added outside the lowering)."""
    fields = dataclasses.asdict(dataclasses.replace(spec, op="", lowering="auto", variant=None, platform=None,
                                                    has_bias=False))
    return json.dumps({k: str(v) for k, v in fields.items()}, sort_keys=True)


def entry_key(spec: ConvSpec, mode: str, platform: str, kind: str) -> str:
    return " | ".join((platform, kind, mode, _versions(), _spec_key(spec)))


# --- measuring ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Entry:
    """One convolution's measurement: the choice, its median time and lax's, and every candidate's time or why it
    was dropped ("lowering:variant" -> seconds or reason)."""

    lowering: str
    variant: str
    time_s: float
    lax_time_s: Optional[float]
    times_s: Dict[str, float]
    dropped: Dict[str, str]
    tuning_s: float
    source: str = "measured"  # or "cache"

    def as_json(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Entry":
        fields = {f.name for f in dataclasses.fields(cls)} - {"source"}
        return cls(**{k: d[k] for k in fields}, source="cache")


_memo: Dict[Tuple[str, str], Entry] = {}  # (cache file, key) -> entry: each spec is measured or read once


def _batched_input_shape(spec: ConvSpec) -> tuple:
    spatial = spec.lowering_in_spatial
    return (spec.batch, *spatial, spec.in_channels) if spec.channels_last else (spec.batch, spec.in_channels,
                                                                              *spatial)


def _random(shape, dtype, key) -> jax.Array:
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        re, im = jax.random.split(key)
        real = jnp.finfo(dtype).dtype
        return (jax.random.normal(re, shape, real) + 1j * jax.random.normal(im, shape, real)).astype(dtype)
    return jax.random.normal(key, shape, dtype)


def _program(lower: Callable, spec: ConvSpec, mode: str) -> Callable:
    if mode == "forward":
        return jax.jit(lambda x, w, g: (lower(spec, x, w),))

    def train(x, w, g):
        y, pullback = jax.vjp(lambda x, w: lower(spec, x, w), x, w)
        return (y, *pullback(g))

    return jax.jit(train)


def _relative_error(a: jax.Array, b: jax.Array) -> float:
    a, b = np.asarray(a, np.complex128), np.asarray(b, np.complex128)
    scale = max(float(np.linalg.norm(b)), np.finfo(np.float64).tiny)
    return float(np.linalg.norm(a - b)) / scale


def _block(outputs):
    return jax.block_until_ready(outputs)


def measure(spec: ConvSpec, candidates: Sequence[Tuple[str, str]], lower: Callable[[str, str], Callable],
            mode: str, budget_s: float, reference: Tuple[str, str]) -> Optional[Entry]:
    """Time `candidates` ((lowering, variant) pairs) on the default device; lower(name, variant) gives the
    function (spec, x, w) -> y to run; `reference` is the candidate whose results the others must match. None
    when lax's own convolution, the reference, failed."""
    # Dispatch runs while the caller's function is traced: without this, the random inputs below would be
    # staged into that trace as tracers instead of being computed.
    with jax.ensure_compile_time_eval():
        return _measure(spec, candidates, lower, mode, budget_s, reference)


def _measure(spec, candidates, lower, mode, budget_s, reference) -> Optional[Entry]:
    start = time.perf_counter()
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = _random(_batched_input_shape(spec), spec.dtype, kx)
    w = _random(spec.weight_shape, spec.dtype, kw)
    g = _random(spec.out_shape if spec.batched else (1, *spec.out_shape), spec.preferred_element_type or spec.dtype,
                kg)
    programs, dropped, first = {}, {}, {}
    for name, variant in candidates:
        label = f"{name}:{variant}"
        candidate_spec = dataclasses.replace(spec, lowering=name, variant=variant)
        try:
            program = _program(lower(name, variant), candidate_spec, mode).lower(x, w, g).compile()
            t0 = time.perf_counter()
            outputs = _block(program(x, w, g))
            first[label] = time.perf_counter() - t0
        except Exception as e:  # any failure drops the candidate: a log line, never a wrong result
            dropped[label] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            continue
        programs[label] = (program, outputs)
    reference_label = f"{reference[0]}:{reference[1]}"
    if reference_label not in programs:
        # Nothing to check the others against: none of them may be chosen unverified.
        logger.warning("jconv autotune: lax's convolution failed for %s (%s); the rules decide",
                       spec.describe(), dropped.get(reference_label))
        return None
    expected = programs[reference_label][1]
    tolerance = TOLERANCE.get(jnp.dtype(spec.preferred_element_type or spec.dtype).name, 1e-4)
    for label in list(programs):
        errors = [_relative_error(a, b) for a, b in zip(programs[label][1], expected)]
        if not all(math.isfinite(e) and e <= tolerance for e in errors):
            dropped[label] = f"differs from lax: relative error {max(errors):.2e} > {tolerance:.0e}"
            del programs[label]
    times: Dict[str, List[float]] = {label: [] for label in programs}
    reps = {label: max(1, min(MAX_REPS, round(SAMPLE_S / max(first[label], 1e-9)))) for label in programs}
    live = list(programs)
    timing_start = time.perf_counter()
    for round_ in range(MAX_ROUNDS if live else 0):
        for label in live:
            program = programs[label][0]
            t0 = time.perf_counter()
            for _ in range(reps[label]):
                outputs = program(x, w, g)
            _block(outputs)
            times[label].append((time.perf_counter() - t0) / reps[label])
        fastest = min(min(times[label]) for label in live)
        live = [label for label in live if min(times[label]) <= PRUNE_FACTOR * fastest]
        if round_ + 1 >= MIN_ROUNDS:
            medians = {label: statistics.median(times[label]) for label in live}
            best = min(live, key=medians.get)
            if all(max(times[best]) < medians[label] for label in live if label != best):
                break
        if time.perf_counter() - timing_start > budget_s:
            break
    medians = {label: statistics.median(t) for label, t in times.items() if t}
    best = min(live, key=medians.get)  # pruned candidates were at least PRUNE_FACTOR slower
    name, variant = best.split(":", 1)
    return Entry(name, variant, medians[best], medians.get(reference_label), medians, dropped,
                 time.perf_counter() - start)


def lookup(key: str) -> Optional[Entry]:
    """The entry for `key` from this process's memo or the cache file; a key with the device kind "*" matches
    any one device's entry (lowering for a platform this process has no device of)."""
    if (cache_path(), key) in _memo:
        return _memo[cache_path(), key]
    entries = _read_current(cache_path())
    if " | * | " in key:
        before, after = key.split(" | * | ")
        matches = [k for k in sorted(entries) if k.startswith(before + " | ") and k.endswith(" | " + after)]
        stored = entries[matches[0]] if matches else None
    else:
        stored = entries.get(key)
    if stored is None:
        return None
    try:
        entry = Entry.from_json(stored)
    except (KeyError, TypeError) as e:
        warnings.warn(f"jconv autotune: ignoring a malformed cache entry ({e})", RuntimeWarning, stacklevel=3)
        return None
    _memo[cache_path(), key] = entry
    return entry


def record(key: str, entry: Entry) -> None:
    _memo[cache_path(), key] = entry
    try:
        _write(cache_path(), lambda entries: {**entries, key: entry.as_json()})
    except OSError as e:  # an unwritable cache costs the next process a measurement, never this one its result
        warnings.warn(f"jconv autotune: could not write the cache file {cache_path()} ({e})", RuntimeWarning,
                      stacklevel=3)


# --- the batch each device runs -----------------------------------------------------------------------------

_batch_factor = contextvars.ContextVar("jconv_autotune_batch_factor", default=1.0)


def batch_factor(x) -> float:
    """How many times the spec's batch one device runs: vmap's axis sizes multiply it, and a concrete input
    sharded along its batch divides it by the shards."""
    from jax._src.interpreters import batching  # no public API gives a vmapped tracer's axis size

    factor = 1.0
    while isinstance(x, batching.BatchTracer):
        factor *= x._trace.axis_data.size
        x = x.val
    sharding = getattr(x, "sharding", None) if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer) \
        else None
    if sharding is not None and x.ndim:
        factor *= sharding.shard_shape(x.shape)[0] / x.shape[0]
    return factor


@contextlib.contextmanager
def batch_scaled(factor: float) -> Iterator[None]:
    token = _batch_factor.set(factor)
    try:
        yield
    finally:
        _batch_factor.reset(token)


def tuning_spec(spec: ConvSpec) -> ConvSpec:
    """The spec with the batch one device runs (see batch_factor)."""
    factor = _batch_factor.get()
    if factor == 1.0:
        return spec
    return dataclasses.replace(spec, batch=max(1, round(spec.batch * factor)), batched=True)


# --- the choice dispatch asks for ---------------------------------------------------------------------------


_MEASURED = "measured in this process"
_UNVERIFIABLE = "autotune: lax's convolution failed, so no candidate could be checked (logged)"
_unverifiable: set = set()  # (cache file, key) of specs whose measurement had no reference


@dataclasses.dataclass(frozen=True)
class Decision:
    entry: Optional[Entry]  # None: dispatch uses its rules
    why: str


def decide(spec: ConvSpec, platform: str, local_platform: str, deterministic: bool,
           candidates: Sequence[Tuple[str, str]], lower: Callable, reference: Tuple[str, str]) -> Decision:
    """The measured (or cached) choice for `spec` on `platform`, or why there is none."""
    tuned = tuning_spec(spec)
    mode = _state["mode"]
    key = entry_key(tuned, mode, platform, device_kind(platform) if platform == local_platform else "*")
    entry = lookup(key)
    if entry is not None:
        return Decision(entry, f"autotune ({mode}): {'from the cache' if entry.source == 'cache' else _MEASURED}")
    if (cache_path(), key) in _unverifiable:
        return Decision(None, _UNVERIFIABLE)
    if deterministic:
        return Decision(None, "autotune: no cache entry, and deterministic mode never measures")
    if platform != local_platform:
        return Decision(None, f"autotune: no cache entry, and {platform} is not this process's device")
    if not _state["measure"]:
        return Decision(None, "autotune: no cache entry (not measured here)")
    if len(candidates) == 1:
        return Decision(None, "autotune: one candidate, nothing to measure")
    entry = measure(tuned, candidates, lower, mode, _state["budget_s"] or DEFAULT_BUDGET_S, reference)
    if entry is None:
        _unverifiable.add((cache_path(), key))  # measured once per process, not on every trace
        return Decision(None, _UNVERIFIABLE)
    record(key, entry)
    lax_time = f", lax {entry.lax_time_s * 1e3:.3g} ms" if entry.lax_time_s else ""
    logger.info("jconv autotune: %s: %d candidates (%d dropped) in %.1f s -> %s:%s %.3g ms%s", tuned.describe(),
                len(candidates), len(entry.dropped), entry.tuning_s, entry.lowering, entry.variant,
                entry.time_s * 1e3, lax_time)
    return Decision(entry, f"autotune ({mode}): {_MEASURED}")


# --- whole programs -----------------------------------------------------------------------------------------

_collected: contextvars.ContextVar = contextvars.ContextVar("jconv_autotune_collected", default=None)


def collect(spec: ConvSpec) -> None:
    """Called by every jconv convolution as it is traced: tune() and report() gather them here."""
    specs = _collected.get()
    if specs is not None:
        specs.append(tuning_spec(spec))


@contextlib.contextmanager
def collecting() -> Iterator[list]:
    specs: list = []
    token = _collected.set(specs)
    try:
        yield specs
    finally:
        _collected.reset(token)


@dataclasses.dataclass(frozen=True)
class Row:
    spec: ConvSpec
    lowering: str
    variant: str
    source: str  # "measured", "cache", "rules" or "explicit"
    time_s: Optional[float]
    lax_time_s: Optional[float]

    @property
    def speedup(self) -> Optional[float]:
        return self.lax_time_s / self.time_s if self.time_s and self.lax_time_s else None


class Report(list):
    """jconv.tune()'s or jconv.report()'s rows, one per distinct convolution; prints as a table."""

    def __str__(self) -> str:
        def ms(t):
            return f"{t * 1e3:.3g}" if t else "-"

        header = ("op", "input", "weight", "dtype", "lowering", "source", "ms", "lax ms", "speed-up")
        rows = [header]
        for r in self:
            s = r.spec
            rows.append((s.op, "x".join(map(str, (s.batch, s.in_channels, *s.in_spatial))),
                         "x".join(map(str, s.weight_shape)), np.dtype(s.dtype).name, f"{r.lowering}:{r.variant}",
                         r.source, ms(r.time_s), ms(r.lax_time_s), f"{r.speedup:.2f}x" if r.speedup else "-"))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def distinct(specs: Iterable[ConvSpec]) -> List[ConvSpec]:
    seen, out = set(), []
    for spec in specs:
        key = _spec_key(spec)
        if key not in seen:
            seen.add(key)
            out.append(spec)
    return out
