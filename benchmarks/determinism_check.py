"""Does a conv backward give bitwise-identical results run after run, with and without jconv's deterministic
mode, and what does the mode cost? One fresh process per mode (XLA reads its flags once per process).

    python benchmarks/determinism_check.py            # CPU here; on a GPU machine it checks the GPU
    python benchmarks/determinism_check.py --runs 10 --out benchmarks/results/determinism_gpu.json

Each case: forward+backward (grads w.r.t. input and weight) repeated --runs times in one process; results are
hashed; timings are medians of the repeated calls after one warm-up.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

CASES = {
    # name: (function, input shape, weight shape, kwargs) -- channels-last shapes, PyTorch weight layout
    "dw7x7_f32": ("conv2d", (64, 56, 56, 96), (96, 1, 7, 7), dict(padding=3, groups=96), "float32"),
    "dw7x7_bf16": ("conv2d", (64, 56, 56, 96), (96, 1, 7, 7), dict(padding=3, groups=96), "bfloat16"),
    "dense3x3_f32": ("conv2d", (32, 56, 56, 256), (256, 256, 3, 3), dict(padding=1), "float32"),
    "c1d_dw_k4_bf16": ("conv1d", (16, 4096, 2048), (2048, 1, 4), dict(padding=3, groups=2048), "bfloat16"),
}
# XLA:CPU's depthwise backward is pathologically slow (../shared/BASELINES.md), so CPU runs a small copy.
CPU_CASES = {
    "dw7x7_f32": ("conv2d", (4, 28, 28, 32), (32, 1, 7, 7), dict(padding=3, groups=32), "float32"),
    "dense3x3_f32": ("conv2d", (4, 28, 28, 64), (64, 64, 3, 3), dict(padding=1), "float32"),
    "c1d_dw_k4_f32": ("conv1d", (2, 1024, 128), (128, 1, 4), dict(padding=3, groups=128), "float32"),
}

WORKER = r"""
import hashlib, json, sys, time
import jax, jax.numpy as jnp, numpy as np, jconv
cases, runs = json.loads(sys.argv[1]), int(sys.argv[2])
out = {}
for name, (fn_name, xs, ws, kw, dtype) in cases.items():
    fn = getattr(jconv, fn_name)
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, xs, dtype)
    w = jax.random.normal(jax.random.fold_in(key, 1), ws, dtype) * 0.1
    step = jax.jit(jax.grad(lambda x, w: (fn(x, w, channels_last=True, **kw).astype(jnp.float32) ** 2).sum(),
                            argnums=(0, 1)))
    jax.block_until_ready(step(x, w))
    hashes, times = set(), []
    for _ in range(runs):
        t0 = time.perf_counter()
        gx, gw = jax.block_until_ready(step(x, w))
        times.append(time.perf_counter() - t0)
        hashes.add(hashlib.sha256(np.asarray(gx.astype(jnp.float32)).tobytes() +
                                  np.asarray(gw.astype(jnp.float32)).tobytes()).hexdigest())
    out[name] = dict(distinct_results=len(hashes), hash=sorted(hashes)[0][:16],
                     median_us=float(np.median(times) * 1e6), shape=xs,
                     lowering=jconv.explain(fn, x, w, channels_last=True, **kw).lowering)
print(json.dumps(dict(platform=jax.default_backend(), device=str(jax.devices()[0]), jax=jax.__version__,
                      deterministic=jconv.are_deterministic_algorithms_enabled(), cases=out)))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", default=None, help="write the JSON report here")
    args = parser.parse_args()
    import jax  # only to learn the platform; the workers start their own backends

    cases = CPU_CASES if jax.default_backend() == "cpu" else CASES
    report = {"date": datetime.date.today().isoformat(), "host": platform.node(), "modes": {}}
    for mode in ("0", "1"):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env["JCONV_DETERMINISTIC"] = mode
        procs = [subprocess.run([sys.executable, "-c", WORKER, json.dumps(cases), str(args.runs)],
                                env=env, capture_output=True, text=True, check=True) for _ in range(2)]
        first, second = (json.loads(p.stdout) for p in procs)
        for name, case in first["cases"].items():
            case["same_across_processes"] = case["hash"] == second["cases"][name]["hash"]
        report["modes"]["deterministic" if mode == "1" else "default"] = first
    base, det = report["modes"]["default"], report["modes"]["deterministic"]
    print(f"{base['device']}, jax {base['jax']}, {args.runs} runs per process, 2 processes per mode")
    print("| case | shape | default: distinct / same across processes / us | deterministic: ... | cost |")
    print("|---|---|---|---|---|")
    for name in cases:
        b, d = base["cases"][name], det["cases"][name]
        print(f"| {name} | {tuple(b['shape'])} | {b['distinct_results']} / {b['same_across_processes']} / "
              f"{b['median_us']:.0f} | {d['distinct_results']} / {d['same_across_processes']} / {d['median_us']:.0f}"
              f" | {100 * (d['median_us'] / b['median_us'] - 1):+.0f}% |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
