"""Check and time jconv's Pallas depthwise kernels on a GPU, against lax, in one run (issue targets: H100, bf16,
channels-last). No GPU was available when the kernels were written, so run this first on one:

    pip install -e . && python benchmarks/pallas_depthwise_gpu.py --out benchmarks/results/pallas_depthwise_gpu

For each case and each of its block-size variants (depthwise.variants) it compiles the kernels (Triton), checks
forward and gradients against lax in float32 and that repeated gradients are bitwise identical, then times the
forward and the forward+backward of lax and of every variant round-robin in one run, and reports lax, the
default variant and the fastest one, with the fraction of the measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jconv  # noqa: E402
from jconv.lowerings.pallas import depthwise  # noqa: E402
from run import interleaved_medians, jax_sync, measure_ceilings  # noqa: E402

CASES = [  # name, fn, channels-last input, weight, kwargs
    ("c1d_dw_k4 16x2048x4096", "conv1d", (16, 4096, 2048), (2048, 1, 4), dict(padding=3, groups=2048)),
    ("convnext dw7x7 64x96x56x56", "conv2d", (64, 56, 56, 96), (96, 1, 7, 7), dict(padding=3, groups=96)),
    ("mbv2 dw3x3 64x384x28x28", "conv2d", (64, 28, 28, 384), (384, 1, 3, 3), dict(padding=1, groups=384)),
    ("replknet dw31 32x128x56x56", "conv2d", (32, 56, 56, 128), (128, 1, 31, 31), dict(padding=15, groups=128)),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if jax.default_backend() != "gpu":
        print("no GPU: this script checks and times the Triton kernels; on CPU they only run in interpret mode, "
              "which tests/ covers")
        return
    ceilings = measure_ceilings("gpu")
    rows = []
    for name, fn_name, xs, ws, kw in CASES:
        fn = getattr(jconv, fn_name)
        key = jax.random.PRNGKey(0)
        x32 = jax.random.normal(key, xs, jnp.float32)
        w32 = jax.random.normal(jax.random.fold_in(key, 1), ws, jnp.float32) * 0.1
        spec = fn.build_spec(x32, w32, None, channels_last=True, **kw)
        variants = depthwise.variants(spec)
        # correctness in float32 (precision=highest on the lax side: no TF32), every variant
        f = lambda lowering: (lambda x, w: fn(x, w, channels_last=True, lowering=lowering,
                                              precision="highest", **kw))
        y_ref, vjp_ref = jax.vjp(f("xla"), x32, w32)
        g = jnp.ones_like(y_ref)
        errors, bitwise = {}, {}
        for variant in variants:
            y_pl, vjp_pl = jax.vjp(f(f"pallas:{variant}"), x32, w32)
            errors[variant] = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
                                  for a, b in zip((y_pl, *vjp_pl(g)), (y_ref, *vjp_ref(g))))
            grads = jax.jit(lambda x, w, g, variant=variant: jax.vjp(f(f"pallas:{variant}"), x, w)[1](g))
            first = grads(x32, w32, g)
            bitwise[variant] = all(bool(jnp.array_equal(a, b)) for _ in range(3)
                                   for a, b in zip(first, grads(x32, w32, g)))
        # timing in the requested dtype, lax and every variant round-robin
        x, w = x32.astype(args.dtype), w32.astype(args.dtype)
        calls = {}
        for lowering in ("xla", *(f"pallas:{v}" for v in variants)):
            h = lambda x, w, lowering=lowering: fn(x, w, channels_last=True, lowering=lowering, **kw)
            fwd = jax.jit(h).lower(x, w).compile()
            y = fwd(x, w)
            gy = jnp.ones_like(y)
            fb = jax.jit(lambda x, w, gy, h=h: jax.vjp(h, x, w)[1](gy)).lower(x, w, gy).compile()
            calls[(lowering, "fwd")] = ((lambda fwd=fwd: fwd(x, w)), jax_sync)
            calls[(lowering, "fwd_bwd")] = ((lambda fb=fb, gy=gy: fb(x, w, gy)), jax_sync)
        times = {k: v[0] * 1e6 for k, v in interleaved_medians(calls).items()}
        best = min(variants, key=lambda v: times[(f"pallas:{v}", "fwd")])
        moved = (x.size + w.size + y.size) * x.dtype.itemsize
        row = dict(case=name, dtype=args.dtype, max_rel_err=errors, bitwise_identical_grads=bitwise,
                   lax_fwd_us=times[("xla", "fwd")], lax_fwd_bwd_us=times[("xla", "fwd_bwd")],
                   default=variants[0], best=best,
                   variants={v: {"fwd_us": times[(f"pallas:{v}", "fwd")],
                                 "fwd_bwd_us": times[(f"pallas:{v}", "fwd_bwd")]} for v in variants},
                   fraction_of_copy_bw=moved / (times[(f"pallas:{best}", "fwd")] / 1e6) / 1e9 / ceilings["copy_GBps"])
        rows.append(row)
        print(json.dumps(row))
    report = dict(date=datetime.date.today().isoformat(), device=jax.devices()[0].device_kind, jax=jax.__version__,
                  ceilings=ceilings, rows=rows)
    print("| case | lax fwd us | default fwd us | best variant | best fwd us | lax fwd+bwd us | best fwd+bwd us |"
          " % copy BW | max rel err | bitwise grads |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        best, default = r["variants"][r["best"]], r["variants"][r["default"]]
        print(f"| {r['case']} | {r['lax_fwd_us']:.0f} | {default['fwd_us']:.0f} | {r['best']} | {best['fwd_us']:.0f} | "
              f"{r['lax_fwd_bwd_us']:.0f} | {best['fwd_bwd_us']:.0f} | {100 * r['fraction_of_copy_bw']:.0f}% | "
              f"{max(r['max_rel_err'].values()):.1e} | {all(r['bitwise_identical_grads'].values())} |")
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
