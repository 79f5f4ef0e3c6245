"""What autotune costs: seconds to tune each layer of the benchmark suite from an empty cache, and the first
training step of examples/train_digits.py with autotune from an empty cache, from a full one, and without it.

    python benchmarks/autotune_cost.py [--out benchmarks/results/autotune_cost_cpu] [--skip-example]

Per layer: jconv.tune (mode "train": forward and both gradients) on a new cache, the wall time of the whole call
(tracing, compiling every candidate, the timing rounds), the candidates, the rules' choice and autotune's, and the
forward+backward medians autotune measured for its choice and for lax. The example runs one epoch per process
(`--epochs 1`) so that its first step, which traces, tunes and compiles, is printed; its cache is a new
directory shared by the two autotune runs. Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jconv  # noqa: E402
from jconv import dispatch  # noqa: E402
from run import default_out, jconv_spec, make_arrays  # noqa: E402
from suites import SUITES  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tune_suite(cases) -> list:
    rows = []
    for index, c in enumerate(cases):
        x, w = make_arrays(c, np.random.default_rng(index))
        spec = jconv_spec(c, x, w)
        call = lambda x, w, c=c: getattr(jconv, c.fn)(x, w, None, channels_last=c.channels_last, **c.options)
        with jconv.autotune(True, cache_dir=tempfile.mkdtemp(prefix="jconv-cost-")):
            start = time.perf_counter()
            report = jconv.tune(call, x, w)
            seconds = time.perf_counter() - start
            choice = dispatch.select(spec)
        entry = choice.entry
        rules = dispatch.select(spec, deterministic=None)  # autotune is off again here: the rules
        rows.append(dict(layer=c.label(), fn=c.fn, input=c.input_shape, weight=c.weight_shape, options=c.options,
                         tune_s=seconds, candidates=len(entry.times_s) + len(entry.dropped) if entry else 1,
                         dropped=entry.dropped if entry else {}, rules=f"{rules.lowering}:{rules.variant}",
                         autotune=f"{choice.lowering}:{choice.variant}",
                         autotune_ms=entry.time_s * 1e3 if entry else None,
                         lax_ms=entry.lax_time_s * 1e3 if entry and entry.lax_time_s else None,
                         rules_ms=entry.times_s.get(f"{rules.lowering}:{rules.variant}", float("nan")) * 1e3
                         if entry else None))
        assert len(report) == 1
        print(f"{c.label()}: {seconds:.1f} s, {rows[-1]['candidates']} candidates -> {rows[-1]['autotune']} "
              f"(rules: {rows[-1]['rules']})", file=sys.stderr, flush=True)
    return rows


def first_step(cache_dir: str, autotune: bool) -> dict:
    command = [sys.executable, os.path.join(ROOT, "examples", "train_digits.py"), "--epochs", "1",
               "--plot", os.devnull] + (["--autotune"] if autotune else [])
    start = time.perf_counter()
    out = subprocess.run(command, env={**os.environ, "JCONV_CACHE_DIR": cache_dir}, capture_output=True, text=True,
                         check=True).stdout
    total = time.perf_counter() - start
    step = float(re.search(r"first step \(.*\): ([0-9.]+) s", out).group(1))
    return dict(autotune=autotune, first_step_s=step, process_s=total)


def markdown(report: dict) -> str:
    rows = report["suite"]
    total = sum(r["tune_s"] for r in rows)
    lines = [f"# Autotune's cost ({report['platform']}), jax {report['jax']}, {report['date']}", "",
             f"Command: `{report['command']}`. Machine: {report['machine']}, {report['cpus']} CPUs.", "",
             "## The benchmark suite, each layer tuned from an empty cache", "",
             f"Seconds per layer (`jconv.tune`, mode train: tracing, compiling every candidate, timing rounds): "
             f"median {np.median([r['tune_s'] for r in rows]):.1f}, max {max(r['tune_s'] for r in rows):.1f}, "
             f"total {total:.0f} for {len(rows)} layers. The ms columns are autotune's own medians "
             "(forward+backward) from the tuning rounds.", "",
             "| layer | tune s | candidates | rules pick | autotune picks | rules ms | autotune ms | lax ms "
             "| dropped |",
             "|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None or v != v else f"{v:.2f}"
    for r in rows:
        dropped = "; ".join(f"{k}: {v}" for k, v in r["dropped"].items()) or "-"
        lines.append(f"| {r['layer']} {tuple(r['input'])} | {r['tune_s']:.1f} | {r['candidates']} | {r['rules']} | "
                     f"{r['autotune']} | {fmt(r['rules_ms'])} | {fmt(r['autotune_ms'])} | {fmt(r['lax_ms'])} | "
                     f"{dropped} |")
    if report.get("example"):
        lines += ["", "## examples/train_digits.py --epochs 1: the first training step", "",
                  "| run | first step s | whole process s |", "|---|---|---|"]
        for name, r in report["example"].items():
            lines.append(f"| {name} | {r['first_step_s']:.1f} | {r['process_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="output prefix (default benchmarks/results/latest_"
                                                    "autotune_cost_<platform>)")
    parser.add_argument("--skip-example", action="store_true")
    args = parser.parse_args()
    out = args.out or default_out(f"autotune_cost_{jax.default_backend()}")
    report = dict(platform=jax.default_backend(), machine=platform.platform(), cpus=os.cpu_count(),
                  jax=jax.__version__, date=datetime.date.today().isoformat(),
                  command=" ".join(["python benchmarks/autotune_cost.py", *sys.argv[1:]]))
    if not args.skip_example:
        cache = tempfile.mkdtemp(prefix="jconv-digits-")
        report["example"] = {"without autotune": first_step(cache, False),
                             "autotune, empty cache": first_step(cache, True),
                             "autotune, full cache": first_step(cache, True)}
    report["suite"] = tune_suite(SUITES[jax.default_backend()])
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    text = markdown(report)
    with open(out + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
