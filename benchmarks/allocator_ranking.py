"""Does the fastest variant of a convolution depend on the process's malloc settings? Side by side per setting.

XLA:CPU allocates each call's buffers with malloc, and glibc's mmap threshold adapts to what the process freed
before (docs/performance.md, "The allocator"), so the same compiled program can run at different speeds in two
processes. For a few shapes where autotune's pick lost to a runner-up in benchmarks/results/
sweep_autotune_seed2029_cpu.md, this starts one child process per malloc setting; each child compiles the
forward+backward of every taps variant and times them round-robin (run.py's interleaved_medians), repeated.

    python benchmarks/allocator_ranking.py --out benchmarks/results/allocator_ranking_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

SETTINGS = {
    "default": {},
    "MALLOC_MMAP_THRESHOLD_=32MiB": {"MALLOC_MMAP_THRESHOLD_": str(32 << 20)},
    "GLIBC_TUNABLES=glibc.malloc.hugetlb=1": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
}
CASES = [  # fn, input, weight, kwargs, dtype: sweep_autotune_seed2029_cpu.md rows 11 and 24
    ("conv1d", (8, 64, 1024), (64, 1, 31), dict(groups=64, padding=30, dilation=2), "float16"),
    ("conv2d", (2, 16, 14, 14), (16, 1, 7, 7), dict(groups=16), "float32"),
]
VARIANTS = ("taps:summed", "taps:per-tap-loop", "taps:summed-loop")


def child(repeats: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import jax.numpy as jnp
    import numpy as np

    import jconv
    from run import interleaved_medians, jax_pair, jax_sync

    rows = []
    for fn_name, xs, ws, kw, dtype in CASES:
        fn = getattr(jconv, fn_name)
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal(xs), dtype)
        w = jnp.asarray(rng.standard_normal(ws) * 0.1, dtype)
        variants = [v for v in VARIANTS if v.split(":")[1] in jconv.lowerings.taps.variants(
            fn.build_spec(x, w, None, **kw))]
        calls = {v: (jax_pair(lambda x, w, v=v: fn(x, w, lowering=v, **kw), x, w)[1], jax_sync) for v in variants}
        medians = {v: [] for v in variants}
        for _ in range(repeats):
            for v, t in interleaved_medians(calls, rounds=5).items():
                medians[v].append(round(t.median * 1e3, 3))
        rows.append(dict(case=f"{fn_name} {xs} {ws} {kw} {dtype}", ms=medians))
    print(json.dumps(rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="round-robin timings per child")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    if args.child:
        return child(args.repeats)
    results = {}
    for name, env in SETTINGS.items():
        proc = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats)],
                              env={**os.environ, **env}, capture_output=True, text=True, check=True)
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(name, json.dumps(results[name]), flush=True)
    lines = ["# The fastest taps variant per malloc setting (cpu)", "",
             f"Command: `python {' '.join(sys.argv)}`. One child process per setting; in each, every variant's "
             "forward+backward timed round-robin, median ms of each repeat.", "",
             "| case | malloc setting | " + " | ".join(VARIANTS) + " | fastest |", "|---|---|" + "---|" * len(VARIANTS) + "---|"]
    for index, (fn_name, xs, ws, kw, dtype) in enumerate(CASES):
        for name in SETTINGS:
            row = results[name][index]
            cells = [", ".join(f"{t:.2f}" for t in row["ms"][v]) if v in row["ms"] else "-" for v in VARIANTS]
            fastest = min(row["ms"], key=lambda v: sorted(row["ms"][v])[len(row["ms"][v]) // 2])
            lines.append(f"| {row['case']} | {name} | " + " | ".join(cells) + f" | {fastest} |")
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump(results, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
