"""Random shapes, auto against plain lax: is auto ever slower on a shape nobody picked?

The suite in suites.py holds real layers; this draws random ones (depthwise with and without a channel
multiplier, grouped, pointwise, dense 3-D, dense / grouped / depthwise transposed; 1-D to 3-D, both layouts,
float32 / bfloat16 / float16) and times the forward+backward (output and gradients w.r.t. input and weight) of
`lowering="auto"` and of plain lax.conv_general_dilated (run.py's plain_lax), the two timed round-robin in one
process (run.py's interleaved_medians). Shapes where auto compiles to lax's own convolution (auto picks `xla`
for dense 1-D/2-D convs) are skipped, since the suite's `same HLO` rows already cover them.

    python benchmarks/sweep.py [--seed S] [--count N] [--out benchmarks/results/sweep_cpu]
    python benchmarks/sweep.py --autotune [--seed S] [--count N] [--cache-dir DIR]

With --autotune, auto is measured dispatch (jconv.autotune, mode="train", the cache in --cache-dir, by default a
new empty one): every shape is timed, lax's own convolution among the choices, and beside auto and lax the
run times the next fastest candidates autotune measured (lowering="<name>:<variant>"), so that auto / best
compares the choice with the best of them in the same round-robin. The tuning seconds per shape are recorded.

Writes <out>.json and <out>.md after every shape (one row per shape, sorted by auto / lax, the rows over 1.05
flagged, each median with the minimum and interquartile range of its samples) and <out>.png at the end (auto /
lax per shape, by lowering). The default <out>, benchmarks/results/latest_sweep_<platform>, is ignored by git.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jconv  # noqa: E402
from jconv import dispatch  # noqa: E402
from run import default_out, interleaved_medians, jax_pair, jax_sync, jconv_spec, make_arrays, plain_lax  # noqa: E402
from suites import case  # noqa: E402

SLOWER = 1.05  # auto / lax above this is flagged: the noise allowance of docs/performance.md's comparisons


def random_case(rng: random.Random, index: int):
    kind = rng.choice(["depthwise", "depthwise", "multiplier", "grouped", "pointwise", "dense_3d",
                       "transposed", "transposed_grouped", "transposed_depthwise"])
    transposed = kind.startswith("transposed")
    ndim = 3 if kind == "dense_3d" else rng.choice([1, 2, 2, 3])
    size = {1: rng.choice([256, 1024, 4096]), 2: rng.choice([14, 28, 56]), 3: rng.choice([8, 12, 16])}[ndim]
    batch = rng.choice([1, 2, 4, 8]) if ndim < 3 else rng.choice([1, 2])
    if kind in ("depthwise", "multiplier", "transposed_depthwise"):
        groups = cin = rng.choice([16, 32, 64, 128])
        cout = cin * (2 if kind == "multiplier" else 1)
    elif kind in ("grouped", "transposed_grouped"):
        groups = rng.choice([2, 4, 8, 16, 32])
        cin, cout = groups * rng.choice([2, 4, 8, 16]), groups * rng.choice([2, 4, 8, 16])
    else:
        groups, cin, cout = 1, rng.choice([8, 16, 32, 64, 128]), rng.choice([8, 16, 32, 64, 128])
    if kind == "pointwise":
        k = 1
    elif ndim == 1:
        k = rng.choice([3, 4, 8, 16, 31])
    else:
        k = rng.choice([2, 3, 3, 4, 5, 7] if ndim == 2 else [2, 3, 3, 4])
    dilation = rng.choice([1, 1, 1, 2])
    options = dict(dilation=dilation, groups=groups)
    if transposed:
        stride = rng.choice([1, 2, 2, 4] if ndim == 1 else [1, 2, 2, 3])
        options["padding"] = rng.choice([0, (k - 1) // 2])
        if stride > 1 and rng.random() < 0.3:
            options["output_padding"] = 1
        weight = (cin, cout // groups) + (k,) * ndim
        fn = f"conv_transpose{ndim}d"
    else:
        stride = rng.choice([1, 1, 2])
        options["padding"] = rng.choice([0, (dilation * (k - 1)) // 2])
        weight = (cout, cin // groups) + (k,) * ndim
        fn = f"conv{ndim}d"
    dtype = rng.choice(["float32", "float32", "bfloat16", "float16"])
    return case(f"{index}_{kind}", fn, (batch, cin) + (size,) * ndim, weight, dtype=dtype,
                channels_last=rng.random() < 0.3, stride=stride, **options)


RUNNERS_UP = 2  # autotune's next fastest candidates timed beside its choice


def _call(c, lowering="auto"):
    return lambda x, w: getattr(jconv, c.fn)(x, w, None, channels_last=c.channels_last, lowering=lowering,
                                             **c.options)


def run(seed: int, count: int, on_shape=None, cache_dir=None) -> dict:
    """The report; on_shape(report so far) is called after every timed shape. With cache_dir, auto is measured
    dispatch with its cache there."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        c = random_case(rng, index)
        x, w = make_arrays(c, np.random.default_rng(index))
        spec = jconv_spec(c, x, w)
        row = dict(layer=c.label(), fn=c.fn, input=c.input_shape, weight=c.weight_shape, options=c.options)
        if cache_dir is None:
            lowering = dispatch.select(spec).lowering
            if lowering == "xla":
                continue
            calls = {"auto": jax_pair(_call(c), x, w)[1]}
        else:
            with jconv.autotune(True, cache_dir=cache_dir):
                start = time.perf_counter()
                calls = {"auto": jax_pair(_call(c), x, w)[1]}
                row["tuning_s"] = time.perf_counter() - start
                choice = dispatch.select(spec)
            entry = choice.entry
            lowering = f"{choice.lowering}:{choice.variant}"
            ranked = sorted(entry.times_s, key=entry.times_s.get) if entry is not None else []
            for label in [label for label in ranked if label != lowering][:RUNNERS_UP]:
                calls[label] = jax_pair(_call(c, label), x, w)[1]
            row["candidates"] = len(entry.times_s) + len(entry.dropped) if entry is not None else 1
        calls["lax"] = jax_pair(plain_lax(spec), x, w)[1]
        # With autotune, candidates close to each other are compared: more rounds and samples narrow the medians.
        sampling = dict(rounds=8, max_reps=10) if cache_dir is not None else {}
        times = interleaved_medians({k: (call, jax_sync) for k, call in calls.items()}, **sampling)
        auto_ms, lax_ms = times["auto"].median * 1e3, times["lax"].median * 1e3
        best_ms = min(t.median for k, t in times.items() if k != "lax") * 1e3
        if cache_dir is not None:  # lax's own convolution is one of autotune's candidates
            best_ms = min(best_ms, lax_ms)
        spread = {k: {"min": t.minimum * 1e3, "q1": t.q1 * 1e3, "q3": t.q3 * 1e3} for k, t in times.items()}
        row.update(lowering=lowering, auto_ms=auto_ms, lax_ms=lax_ms, ratio=auto_ms / lax_ms, best_ms=best_ms,
                   best_ratio=auto_ms / best_ms, runners_up={k: t.median * 1e3 for k, t in times.items()
                                                             if k not in ("auto", "lax")}, spread=spread)
        rows.append(row)
        print(f"{index + 1}/{count} {c.fn} {c.input_shape} {c.options} {c.dtype}: {lowering} "
              f"{auto_ms:.2f} ms, lax {lax_ms:.2f} ms, best {best_ms:.2f} ms", file=sys.stderr, flush=True)
        if on_shape is not None:
            on_shape(_report(seed, count, rows, complete=index == count - 1, autotune=cache_dir is not None))
    return _report(seed, count, rows, complete=True, autotune=cache_dir is not None)


def _report(seed: int, count: int, rows: list, complete: bool, autotune: bool = False) -> dict:
    return dict(platform=jax.default_backend(), machine=platform.platform(), cpus=os.cpu_count(),
                jax=jax.__version__, date=datetime.date.today().isoformat(), seed=seed, count=count,
                command=" ".join(["python benchmarks/sweep.py", *sys.argv[1:]]), rows=rows, complete=complete,
                autotune=autotune)


def _spread(row: dict, key: str) -> str:
    s = row.get("spread", {}).get(key)
    return "" if s is None else f" ({s['min']:.2f}; {s['q1']:.2f}-{s['q3']:.2f})"


def markdown(report: dict) -> str:
    if report.get("autotune"):
        return _autotune_markdown(report)
    rows = sorted(report["rows"], key=lambda r: -r["ratio"])
    slower = [r for r in rows if r["ratio"] > SLOWER]
    lines = [f"# Random-shape sweep: auto vs plain lax ({report['platform']}), jax {report['jax']}, {report['date']}",
             "",
             f"Command: `{report['command']}`. Machine: {report['machine']}, {report['cpus']} CPUs. "
             f"{len(rows)} random shapes that auto does not send to lax's own conv (seed {report['seed']}); "
             "forward+backward (output and gradients w.r.t. input and weight), median ms, auto and lax timed "
             f"round-robin in one process, each with (minimum; interquartile range) of its samples. Over {SLOWER}x "
             f"(slower than lax): {len(slower)}.",
             *([] if report.get("complete", True) else ["", "**Incomplete: the run is in progress or was "
                                                            "interrupted.**"]),
             "",
             "| auto / lax | auto picks | auto ms | lax ms | fn | input | weight | options | dtype, layout |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = " **slower**" if r["ratio"] > SLOWER else ""
        dtype_layout = r["layer"].split(" ", 1)[1]
        lines.append(f"| {r['ratio']:.2f}{flag} | {r['lowering']} | {r['auto_ms']:.2f}{_spread(r, 'auto')} | "
                     f"{r['lax_ms']:.2f}{_spread(r, 'lax')} | "
                     f"{r['fn']} | {tuple(r['input'])} | {tuple(r['weight'])} | {r['options']} | {dtype_layout} |")
    return "\n".join(lines) + "\n"


def _autotune_markdown(report: dict) -> str:
    rows = sorted(report["rows"], key=lambda r: -r["ratio"])
    slower = [r for r in rows if r["ratio"] > SLOWER]
    off_best = [r for r in rows if r["best_ratio"] > SLOWER]
    tuning = sorted(r["tuning_s"] for r in rows)
    lines = [f"# Random-shape sweep with autotune: auto vs plain lax ({report['platform']}), jax {report['jax']}, "
             f"{report['date']}",
             "",
             f"Command: `{report['command']}`. Machine: {report['machine']}, {report['cpus']} CPUs. "
             f"{len(rows)} random shapes (seed {report['seed']}), auto = measured dispatch (mode train) from an "
             "empty cache. Forward+backward (output and gradients w.r.t. input and weight), median ms, auto, lax and "
             f"autotune's next {RUNNERS_UP} candidates timed round-robin in one process, each with (minimum; "
             f"interquartile range) of its samples. Over {SLOWER}x lax: {len(slower)}. Over {SLOWER}x the best "
             f"timed here (auto, lax or a runner-up): {len(off_best)}.",
             "",
             f"Tuning, seconds per shape (compiling every candidate included): median "
             f"{statistics.median(tuning):.1f}, min {tuning[0]:.1f}, max {tuning[-1]:.1f}, total {sum(tuning):.0f}"
             if tuning else "",
             "",
             "| auto / lax | auto / best | autotune picks (of n) | tuning s | auto ms | lax ms | runners-up ms | fn | "
             "input | weight | options | dtype, layout |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = " **slower**" if r["ratio"] > SLOWER else ""
        best_flag = " **off best**" if r["best_ratio"] > SLOWER else ""
        runners = ", ".join(f"{k} {v:.2f}" for k, v in r["runners_up"].items()) or "-"
        dtype_layout = r["layer"].split(" ", 1)[1]
        lines.append(f"| {r['ratio']:.2f}{flag} | {r['best_ratio']:.2f}{best_flag} | {r['lowering']} "
                     f"({r['candidates']}) | {r['tuning_s']:.1f} | {r['auto_ms']:.2f}{_spread(r, 'auto')} | "
                     f"{r['lax_ms']:.2f}{_spread(r, 'lax')} | {runners} | {r['fn']} | {tuple(r['input'])} | "
                     f"{tuple(r['weight'])} | {r['options']} | {dtype_layout} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str) -> bool:
    """auto / lax per shape (log scale), one colour per lowering, sorted; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = sorted(report["rows"], key=lambda r: r["ratio"])
    lowerings = sorted({r["lowering"] for r in rows})
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name in lowerings:
        points = [(i, r["ratio"]) for i, r in enumerate(rows) if r["lowering"] == name]
        ax.scatter(*zip(*points), label=name, s=18)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(SLOWER, color="k", lw=0.5, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("random shapes, sorted by auto / lax")
    ax.set_ylabel("auto / lax, forward+backward (log)")
    ax.set_title(f"Random-shape sweep ({report['platform']}), seed {report['seed']}, {report['date']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def write_report(report: dict, out: str, final: bool) -> str:
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    text = markdown(report)
    with open(out + ".md", "w") as f:
        f.write(text)
    if final and report["rows"]:
        plot(report, out + ".png")
    return text


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--out", default=None,
                        help="output prefix (default benchmarks/results/latest_sweep_<platform>, or "
                             "latest_sweep_autotune_<platform> with --autotune)")
    parser.add_argument("--autotune", action="store_true", help="auto is measured dispatch (jconv.autotune)")
    parser.add_argument("--cache-dir", default=None, help="with --autotune: the cache (default: a new empty one)")
    args = parser.parse_args()
    out = args.out or default_out(f"sweep_{'autotune_' if args.autotune else ''}{jax.default_backend()}")
    cache_dir = (args.cache_dir or tempfile.mkdtemp(prefix="jconv-sweep-")) if args.autotune else None
    report = run(args.seed, args.count, on_shape=lambda partial: write_report(partial, out, final=False),
                 cache_dir=cache_dir)
    print(write_report(report, out, final=True))


if __name__ == "__main__":
    main()
