"""Benchmark every jconv lowering against plain lax, flax.linen.Conv and torch, side by side in one run.

    python benchmarks/run.py                       # the suite for this platform (CPU: under 10 minutes here)
    python benchmarks/run.py --only dw7x7 --quick  # a subset, fewer repetitions
    python benchmarks/run.py --out benchmarks/results/gpu_h100   # results to commit, e.g. on a GPU machine

It first measures the machine's ceilings (copy bandwidth, matmul rate), then for each layer shape times the
forward and the forward+backward (gradients w.r.t. input and weight) of: plain lax.conv_general_dilated, every
jconv lowering that accepts the shape, flax.linen.Conv (if installed) and torch (if installed). `auto` is the
lowering jconv's dispatch picks, so its time is that lowering's time from the same run. Times are medians of
calls after compilation, the variants of one layer timed round-robin over several rounds so that machine drift
affects them alike; each median is reported with the minimum and the interquartile range of its samples.
Writes <out>.json and <out>.md after every layer (an interrupted run keeps what it measured) and <out>.png
(speed-up over lax per layer) at the end. The default <out>, benchmarks/results/latest_<platform>, is ignored by
git; committed results are only written when --out names them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jconv  # noqa: E402
from jconv import dispatch, spec as spec_mod  # noqa: E402
from jconv.lowerings import xla as xla_lowering  # noqa: E402
from suites import SUITES  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None
try:
    import flax.linen as flax_nn
except ImportError:
    flax_nn = None


# --- timing -------------------------------------------------------------------------------------------------


class Timing(NamedTuple):
    """One call's samples, in seconds: the median, their number, the minimum and the quartiles."""
    median: float
    count: int
    minimum: float
    q1: float
    q3: float

    def ms(self) -> str:
        """'median (minimum, q1-q3)' in ms, the cell the A/B scripts print."""
        return f"{self.median * 1e3:.2f} ({self.minimum * 1e3:.2f}, {self.q1 * 1e3:.2f}-{self.q3 * 1e3:.2f})"


def summarize(samples: list) -> Timing:
    q1, q3 = (np.percentile(samples, (25, 75)) if len(samples) > 1 else (samples[0], samples[0]))
    return Timing(statistics.median(samples), len(samples), min(samples), float(q1), float(q3))


def interleaved_medians(calls: dict, rounds: int = 4, round_time: float = 0.15, max_reps: int = 5,
                        slow: float = 3.0) -> dict:
    """Seconds per call, the calls timed round-robin so that machine drift hits all of them alike.

    `calls` maps a key to (call, sync). A call whose warm-up run takes over `slow` seconds is run only once more.
    Returns {key: Timing} (median first, so `median, count, *_ = timing` reads it).
    """
    samples = {key: [] for key in calls}
    single = set()
    for key, (call, sync) in calls.items():
        start = time.perf_counter()
        sync(call())
        if time.perf_counter() - start > slow:
            single.add(key)
    for key in single:
        call, sync = calls[key]
        start = time.perf_counter()
        sync(call())
        samples[key].append(time.perf_counter() - start)
    for _ in range(rounds):
        for key, (call, sync) in calls.items():
            if key in single:
                continue
            spent = 0.0
            for _ in range(max_reps):
                start = time.perf_counter()
                sync(call())
                elapsed = time.perf_counter() - start
                samples[key].append(elapsed)
                spent += elapsed
                if spent > round_time:
                    break
    return {key: summarize(v) for key, v in samples.items()}


def median_time(call, sync):
    """Median seconds of one call (for the ceilings)."""
    return interleaved_medians({0: (call, sync)})[0]


def jax_sync(out):
    jax.block_until_ready(out)


def torch_sync(out):
    if torch is not None and torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_ceilings(platform_name: str) -> dict:
    """Copy bandwidth (bytes read + written per second) and matmul rate on this device."""
    n = (256 if platform_name != "cpu" else 64) * 2**20 // 4
    # In place (the input buffer donated to the output): a fresh 64 MB output is above glibc's mmap threshold
    # (32 MB at most), so on CPU every call would map new pages and fault them in, and this would time the
    # page faults (4.6-4.9 GB/s on the 2-core CI machine, against ~47 in place).
    copy = jax.jit(lambda a: a * 1.0001, donate_argnums=0).lower(jax.ShapeDtypeStruct((n,), jnp.float32)).compile()
    buffer = [jnp.ones((n,), jnp.float32)]

    def copy_in_place():
        buffer[0] = copy(buffer[0])
        return buffer[0]

    t_copy = median_time(copy_in_place, jax_sync).median
    size, dtype = (8192, jnp.bfloat16) if platform_name != "cpu" else (2048, jnp.float32)
    m = jnp.ones((size, size), dtype)
    mm = jax.jit(lambda a, b: a @ b).lower(m, m).compile()
    t_mm = median_time(lambda: mm(m, m), jax_sync).median
    return {"copy_GBps": 2 * n * 4 / t_copy / 1e9, "matmul_TFLOPs": 2 * size**3 / t_mm / 1e12,
            "matmul_dtype": jnp.dtype(dtype).name}


# --- the variants -------------------------------------------------------------------------------------------


def make_arrays(case, rng):
    dtype = jnp.dtype(case.dtype)
    x = rng.standard_normal(case.input_shape).astype(np.float32)
    if case.channels_last:
        x = np.moveaxis(x, 1, -1)
    w = (rng.standard_normal(case.weight_shape) * 0.1).astype(np.float32)
    return jnp.asarray(x, dtype), jnp.asarray(w, dtype)


def jconv_spec(case, x, w):
    return getattr(jconv, case.fn).build_spec(x, w, None, channels_last=case.channels_last, **case.options)


def plain_lax(spec):
    """What a JAX user writes by hand: one lax.conv_general_dilated (the textbook form for transposed convs)."""
    if spec.transposed:
        return lambda x, w: xla_lowering.lower(spec, x, w)
    from jconv.lowerings.common import dimension_numbers

    return lambda x, w: lax.conv_general_dilated(
        x, w, spec.stride, spec.padding, rhs_dilation=spec.dilation, dimension_numbers=dimension_numbers(spec),
        feature_group_count=spec.groups)


def flax_conv(spec, w):
    """flax.linen.Conv with the same weights; it takes channels-last input, so NCHW inputs are transposed."""
    if flax_nn is None or spec.transposed or spec.padding_mode != "zeros":
        return None, None
    module = flax_nn.Conv(features=spec.out_channels, kernel_size=spec.kernel_size, strides=spec.stride,
                          padding=list(spec.padding), kernel_dilation=spec.dilation,
                          feature_group_count=spec.groups, use_bias=False, dtype=spec.dtype, param_dtype=spec.dtype)
    kernel = jnp.moveaxis(w, (0, 1), (-1, -2))  # (O, I, *k) -> (*k, I, O)

    def f(x, kernel):
        if not spec.channels_last:
            x = jnp.moveaxis(x, 1, -1)
        y = module.apply({"params": {"kernel": kernel}}, x)
        return y if spec.channels_last else jnp.moveaxis(y, -1, 1)

    return f, kernel


def torch_variant(case, x, w):
    if torch is None:
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[case.dtype]
    if device == "cpu" and dtype != torch.float32:
        return None
    xt = torch.tensor(np.asarray(x, np.float32), device=device, dtype=dtype)
    if case.channels_last:
        xt = xt.movedim(-1, 1).contiguous(memory_format=torch.channels_last if xt.ndim == 4 else
                                          torch.channels_last_3d if xt.ndim == 5 else torch.contiguous_format)
    wt = torch.tensor(np.asarray(w, np.float32), device=device, dtype=dtype)
    fn = getattr(F, case.fn)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = True
    forward = lambda: fn(xt, wt, **case.options)
    with torch.no_grad():
        y = forward()
    g = torch.randn_like(y)
    xg, wg = xt.clone().requires_grad_(True), wt.clone().requires_grad_(True)

    def fwd_bwd():
        xg.grad = wg.grad = None
        out = fn(xg, wg, **case.options)
        out.backward(g)
        return out

    def fwd():
        with torch.no_grad():
            return forward()

    return fwd, fwd_bwd


def vjp_of_forward(spec):
    """The other formulation of a transposed conv that issue #8 asks to compare: the input gradient (VJP) of the
    forward conv it is the adjoint of, here jconv's own (auto-lowered) forward conv. PyTorch's transposed-conv
    weight (C_in, C_out/g, *k) is exactly that forward conv's weight."""
    if not spec.transposed:
        return None
    forward = getattr(jconv, f"conv{spec.ndim}d")
    options = dict(stride=spec.stride, padding=tuple(lo for lo, _ in spec.padding), dilation=spec.dilation,
                   groups=spec.groups, channels_last=spec.channels_last)

    def f(x, w):
        _, pullback = jax.vjp(lambda y: forward(y, w, **options), jnp.zeros(spec.out_shape, x.dtype))
        return pullback(x)[0]

    return f


def program_text(compiled) -> str:
    """Compiled HLO without source metadata: equal texts are the same program."""
    text = re.sub(r"metadata=\{[^}]*\}", "", compiled.as_text())
    return "\n".join(line for line in text.splitlines() if "HloModule" not in line and not line.startswith(
        ("FileNames", "FunctionNames", "FileLocations", "StackFrames")) and not re.match(r"^\d+ [{\"]", line))


def temp_megabytes(compiled):
    """The per-call scratch buffer XLA allocates for a compiled program (None where the backend does not say)."""
    analysis = compiled.memory_analysis()
    return None if analysis is None else analysis.temp_size_in_bytes / 2**20


def jax_pair(f, x, w):
    """Compiled forward and forward+backward (output and gradients w.r.t. both arguments), their programs, and
    the forward+backward's scratch size in MB."""
    fwd = jax.jit(f).lower(x, w).compile()
    y = fwd(x, w)
    g = jnp.asarray(np.random.default_rng(1).standard_normal(y.shape), y.dtype)

    def fb(x, w, g):
        out, vjp = jax.vjp(f, x, w)
        return (out, *vjp(g))

    both = jax.jit(fb).lower(x, w, g).compile()
    return (lambda: fwd(x, w)), (lambda: both(x, w, g)), program_text(fwd) + program_text(both), \
        temp_megabytes(both)


def interleaved_pairs(functions: dict, x, w, rounds: int) -> dict:
    """The forward and forward+backward (jax_pair) of each named function, all timed round-robin together:
    {(name, "fwd" or "fb"): Timing}."""
    calls = {}
    for name, f in functions.items():
        fwd, fb, _, _ = jax_pair(f, x, w)
        calls[name, "fwd"], calls[name, "fb"] = (fwd, jax_sync), (fb, jax_sync)
    return interleaved_medians(calls, rounds=rounds)


# --- one run ------------------------------------------------------------------------------------------------


def run(cases, quick: bool, progress=True, on_layer=None) -> dict:
    """The report; on_layer(report so far) is called after every layer, so that it can be written as it grows."""
    platform_name = jax.default_backend()
    ceilings = measure_ceilings(platform_name)
    rng = np.random.default_rng(0)
    rows = []
    plan = []
    for case in cases:
        x, w = make_arrays(case, rng)
        spec = jconv_spec(case, x, w)
        variants = {"lax": (plain_lax(spec), w)}
        for name, module in dispatch.LOWERINGS.items():
            if name == "pallas" and platform_name != "gpu":
                continue  # interpret mode times the interpreter, not the kernel
            if module.refusal(spec) is None:
                variants[name] = (
                    lambda x, w, name=name: getattr(jconv, case.fn)(x, w, channels_last=case.channels_last,
                                                                    lowering=name, **case.options), w)
        if spec.transposed:
            variants["vjp"] = (vjp_of_forward(spec), w)
        flax_f, flax_w = flax_conv(spec, w)
        if flax_f is not None:
            variants["flax"] = (flax_f, flax_w)
        plan.append((case, x, w, spec, variants))
    kw = dict(rounds=2, round_time=0.05, max_reps=3) if quick else {}
    for index, (case, x, w, spec, variants) in enumerate(plan, 1):
        if progress:
            print(f"[{index:2d}/{len(plan)}] {case.label():34s} {', '.join(variants)}"
                  f"{', torch' if torch is not None else ''} ...", end="", file=sys.stderr, flush=True)
        auto = dispatch.select(spec).lowering
        row = {"case": case.label(), "name": case.name, "fn": case.fn, "dtype": case.dtype,
               "channels_last": case.channels_last, "input": list(case.input_shape), "weight": list(case.weight_shape),
               "options": case.options, "auto": auto, "flops": spec_mod.flops(spec),
               "bytes": (x.size + w.size + math.prod(spec.out_shape)) * x.dtype.itemsize, "times": {},
               "fwd_bwd_temp_MB": {}}
        calls, programs = {}, {}
        for name, (f, wv) in variants.items():
            fwd, fb, programs[name], row["fwd_bwd_temp_MB"][name] = jax_pair(f, x, wv)
            calls[(name, "fwd_ms")] = (fwd, jax_sync)
            calls[(name, "fwd_bwd_ms")] = (fb, jax_sync)
        pair = torch_variant(case, x, w) if torch is not None else None
        if pair is not None:
            calls[("torch", "fwd_ms")] = (pair[0], torch_sync)
            calls[("torch", "fwd_bwd_ms")] = (pair[1], torch_sync)
        started = time.perf_counter()
        for (name, kind), timing in interleaved_medians(calls, **kw).items():
            entry = row["times"].setdefault(name, {"reps": {}, "spread": {}})
            entry[kind] = timing.median * 1e3
            entry["reps"][kind] = timing.count
            entry["spread"][kind] = {"min": timing.minimum * 1e3, "q1": timing.q1 * 1e3, "q3": timing.q3 * 1e3}
        row["times"]["auto"] = dict(row["times"][auto], lowering=auto)
        # Where auto compiles to exactly lax's program, their ratio measures only the machine's noise.
        row["auto_same_program_as_lax"] = programs[auto] == programs["lax"]
        rows.append(row)
        if progress:
            t = row["times"]
            print(f" {time.perf_counter() - started:5.1f} s; fwd+bwd lax {t['lax']['fwd_bwd_ms']:.1f} ms, auto "
                  f"({auto}) {t['auto']['fwd_bwd_ms']:.1f} ms", file=sys.stderr, flush=True)
        if on_layer is not None:
            on_layer(_report(platform_name, ceilings, rows, complete=index == len(plan)))
    return _report(platform_name, ceilings, rows, complete=True)


def _report(platform_name: str, ceilings: dict, rows: list, complete: bool) -> dict:
    device = jax.devices()[0]
    return {
        "complete": complete,
        "date": datetime.date.today().isoformat(), "platform": platform_name,
        "device": getattr(device, "device_kind", str(device)), "host_cpus": os.cpu_count(), "host_cpu": host_cpu(),
        "machine": platform.platform(), "jax": jax.__version__, "torch": getattr(torch, "__version__", None),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "command": command_line(), "ceilings": ceilings, "rows": rows,
    }


def host_cpu() -> str:
    """The CPU model and its widest vector instructions (Linux), which decide how fast XLA's and torch's kernels
    can be (docs/performance.md compares two CPU models)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return platform.processor() or "unknown"
    fields = {key.strip(): value.strip() for key, value in
              (line.split(":", 1) for line in info.splitlines() if ":" in line)}
    model, flags = fields.get("model name", "unknown"), fields.get("flags", "").split()
    vector = [f for f in ("avx2", "fma", "avx512f", "amx_tile") if f in flags]
    return f"{model} ({', '.join(vector) or 'no avx2'}{'' if 'avx512f' in flags else '; no avx512'})"


# Process-wide settings that change what is measured: XLA's own flags, and glibc malloc's (which decide whether
# XLA:CPU's large per-call buffers are page-faulted in on every call; docs/performance.md, "The allocator").
MEASUREMENT_ENVIRONMENT = ("XLA_FLAGS", "GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def command_line() -> str:
    settings = [f"{name}={os.environ[name]}" for name in MEASUREMENT_ENVIRONMENT if os.environ.get(name)]
    return " ".join(settings + ["python"] + sys.argv)


# --- reporting ----------------------------------------------------------------------------------------------


def temp(row: dict, name: str) -> str:
    megabytes = row.get("fwd_bwd_temp_MB", {}).get(name)
    return "–" if megabytes is None else f"{megabytes:.0f}"


def spread(times: dict, kind: str = "fwd_bwd_ms") -> str:
    """`min q1-q3` of one variant's samples (ms), or – for reports written before the spread was recorded."""
    s = times.get("spread", {}).get(kind)
    return "–" if s is None else f"{s['min']:.2f} {s['q1']:.2f}-{s['q3']:.2f}"


def markdown(report: dict) -> str:
    c = report["ceilings"]
    lines = [
        f"# jconv benchmark: {report['device']} ({report['platform']}), jax {report['jax']}, "
        f"torch {report['torch']}, {report['date']}",
        "",
        *([] if report.get("complete", True) else ["**Incomplete: the run is in progress or was interrupted.**",
                                                    ""]),
        f"Command: `{report['command']}`. Machine: {report['machine']}, {report['host_cpus']} CPUs"
        f"{', ' + report['host_cpu'] if report.get('host_cpu') else ''}.",
        f"Ceilings measured in the same run: copy {c['copy_GBps']:.1f} GB/s (read + write), "
        f"{c['matmul_dtype']} matmul {c['matmul_TFLOPs']:.3f} TFLOP/s.",
        "",
        "Median ms; `auto` is the lowering jconv picks (named), timed in this run. Speed-ups are lax / auto. "
        "GB/s and TFLOP/s are auto's forward (useful bytes: input + weight + output; useful FLOPs). "
        "`(same HLO)`: auto compiled to exactly plain lax's programs (forward and forward+backward, compared "
        "as text without source metadata), so that ratio is run-to-run noise, not a difference between them. "
        "`temp MB`: the scratch buffer XLA allocates per forward+backward call (lax / auto); on Linux CPUs, one "
        "over glibc's 32 MB mmap threshold is mapped and page-faulted in on every call (docs/performance.md, "
        "\"The allocator\"). `spread`: the minimum and the interquartile range of the forward+backward samples "
        "(lax; auto), ms.",
        "",
        "| layer | auto picks | lax fwd | auto fwd | fwd speed-up | lax fwd+bwd | auto fwd+bwd | fwd+bwd speed-up "
        "| torch fwd | torch fwd+bwd | auto / torch (fwd+bwd) | flax fwd+bwd | GB/s (% copy) | TFLOP/s (% matmul) "
        "| temp MB | spread (lax; auto) |",
        "|" + "---|" * 16,
    ]
    for row in report["rows"]:
        t = row["times"]
        lax_t, auto_t, torch_t, flax_t = t["lax"], t["auto"], t.get("torch"), t.get("flax")
        gbs = row["bytes"] / (auto_t["fwd_ms"] / 1e3) / 1e9
        tfs = row["flops"] / (auto_t["fwd_ms"] / 1e3) / 1e12
        fmt = lambda v: f"{v:.2f}" if v is not None else "–"
        same = " (same HLO)" if row.get("auto_same_program_as_lax") else ""
        lines.append(
            f"| {row['case']} | {row['auto']} | {fmt(lax_t['fwd_ms'])} | {fmt(auto_t['fwd_ms'])} | "
            f"{lax_t['fwd_ms'] / auto_t['fwd_ms']:.2f}x{same} | {fmt(lax_t['fwd_bwd_ms'])} | {fmt(auto_t['fwd_bwd_ms'])} | "
            f"{lax_t['fwd_bwd_ms'] / auto_t['fwd_bwd_ms']:.2f}x{same} | "
            f"{fmt(torch_t['fwd_ms'] if torch_t else None)} | {fmt(torch_t['fwd_bwd_ms'] if torch_t else None)} | "
            f"{(auto_t['fwd_bwd_ms'] / torch_t['fwd_bwd_ms']) if torch_t else float('nan'):.2f} | "
            f"{fmt(flax_t['fwd_bwd_ms'] if flax_t else None)} | "
            f"{gbs:.1f} ({100 * gbs / report['ceilings']['copy_GBps']:.0f}%) | "
            f"{tfs:.3f} ({100 * tfs / report['ceilings']['matmul_TFLOPs']:.0f}%) | {temp(row, 'lax')} / "
            f"{temp(row, row['auto'])} | {spread(lax_t)}; {spread(auto_t)} |")
    columns = ["lax", *dispatch.LOWERING_NAMES, "vjp", "flax", "torch"]
    lines += ["", "Every lowering (fwd / fwd+bwd ms). `vjp`: a transposed conv computed as the input gradient of "
              "jconv's forward conv (the alternative formulation to `phase`).", "",
              "| layer | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for row in report["rows"]:
        cells = []
        for n in columns:
            v = row["times"].get(n)
            cells.append(f"{v['fwd_ms']:.2f} / {v['fwd_bwd_ms']:.2f}" if v else "–")
        lines.append(f"| {row['case']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = report["rows"]
    labels = [r["case"] for r in rows]
    fwd = [r["times"]["lax"]["fwd_ms"] / r["times"]["auto"]["fwd_ms"] for r in rows]
    fb = [r["times"]["lax"]["fwd_bwd_ms"] / r["times"]["auto"]["fwd_bwd_ms"] for r in rows]
    tor = [r["times"]["lax"]["fwd_bwd_ms"] / r["times"]["torch"]["fwd_bwd_ms"] if "torch" in r["times"] else 0
           for r in rows]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.5))
    ax.barh(y - 0.27, fwd, 0.27, label="jconv auto, forward")
    ax.barh(y, fb, 0.27, label="jconv auto, forward+backward")
    ax.barh(y + 0.27, tor, 0.27, label="torch, forward+backward", color="0.7")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up over plain lax.conv_general_dilated (log scale)")
    ax.set_title(f"jconv on {report['device']} ({report['platform']}), jax {report['jax']}, {report['date']}")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def write_report(report: dict, out: str, final: bool) -> str:
    """<out>.json and <out>.md (and, when final, <out>.png); returns the markdown."""
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    text = markdown(report)
    with open(out + ".md", "w") as f:
        f.write(text)
    if final:
        plot(report, out + ".png")
    return text


def default_out(name: str) -> str:
    """benchmarks/results/latest_<name>: ignored by git, so a run never overwrites committed results unasked."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"latest_{name}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated substrings of layer names to run")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--out", default=None, help="output prefix (default benchmarks/results/latest_<platform>)")
    args = parser.parse_args()
    platform_name = jax.default_backend()
    cases = SUITES[platform_name]
    if args.only:
        keys = args.only.split(",")
        cases = [c for c in cases if any(k in c.label() for k in keys)]
    out = args.out or default_out(platform_name)
    report = run(cases, args.quick, on_layer=lambda partial: write_report(partial, out, final=False))
    print(write_report(report, out, final=True))
    print(f"wrote {out}.json, {out}.md, {out}.png", file=sys.stderr)


if __name__ == "__main__":
    main()
