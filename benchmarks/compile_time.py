"""First-call time (trace, compile and one run) of forward+backward for the lowerings that build one program per
stride or dilation phase, against lax's own convolution, as the number of phases grows.

    python benchmarks/compile_time.py            # both sweeps, printed as a Markdown table
    python benchmarks/compile_time.py --only phase

The evidence for jconv.lowerings.common.MAX_PHASES (benchmarks/results/compile_time_cpu.md).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import jconv


def first_call_seconds(fn, *args) -> float:
    loss = lambda x, w: jnp.sum(fn(x, w) ** 2)
    start = time.perf_counter()
    jax.block_until_ready(jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(*args))
    return time.perf_counter() - start


def phase_rows():
    for n in (1, 2):
        for s in (2, 4, 8, 16, 32):
            x = jnp.ones((2, 16, *((64,) if n == 1 else (8, 8))))
            w = jnp.full((16, 8, *(2 * s,) * n), 0.01)
            f = getattr(jconv, f"conv_transpose{n}d")
            times = [first_call_seconds(lambda x, w: f(x, w, stride=s, padding=s // 2, lowering=lowering), x, w)
                     for lowering in ("xla", "phase")]
            yield f"conv_transpose{n}d k={2 * s} stride={s}", s ** n, *times


def dilated_rows():
    for n in (1, 2):
        for d in (2, 4, 8, 16, 20):
            x = jnp.ones((2, 16, *((512,) if n == 1 else (96, 96))))
            w = jnp.full((16, 16, *(3,) * n), 0.01)
            f = getattr(jconv, f"conv{n}d")
            times = [first_call_seconds(lambda x, w: f(x, w, dilation=d, padding=d, lowering=lowering), x, w)
                     for lowering in ("xla", "dilated")]
            yield f"conv{n}d k=3 dilation={d}", d ** n, *times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("phase", "dilated"), default=None)
    args = parser.parse_args()
    sweeps = {"phase": phase_rows, "dilated": dilated_rows}
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}\n")
    print("| lowering | convolution | phases | xla first call (s) | lowering first call (s) | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for name, rows in sweeps.items():
        if args.only not in (None, name):
            continue
        for label, phases, t_xla, t_lowering in rows():
            print(f"| {name} | {label} | {phases} | {t_xla:.2f} | {t_lowering:.2f} | {t_lowering / t_xla:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
