"""What a lax.cond around a convolution or an elementwise loop costs on the current backend, side by side.

    python benchmarks/cond_overhead.py [--rounds 3]

The same work jitted plain and inside a lax.cond whose predicate is a runtime value (its taken branch is the plain
work). The evidence for why jconv guards only elementwise work with a runtime branch (docs/semantics.md,
"Non-finite values"; results in benchmarks/results/cond_overhead_cpu.md).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def median_ms(f, *args, repeats: int = 7) -> float:
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    key = jax.random.key(0)
    x = jax.random.normal(key, (8, 64, 56, 56))
    w = jax.random.normal(key, (64, 64, 3, 3))
    conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), [(1, 1), (1, 1)])
    elementwise = lambda x, w: x * 2 + w[0, 0, 0, 0]
    finite = lambda w: jnp.all(jnp.isfinite(w))
    big = jax.random.normal(key, (8, 256, 56, 56))
    programs = {
        "conv 3x3 8x64x56x56": (jax.jit(conv), jax.jit(lambda x, w: lax.cond(finite(w), conv, lambda x, w: conv(x, w) + 1,
                                                                              x, w))),
        "elementwise 8x64x56x56": (jax.jit(elementwise),
                                   jax.jit(lambda x, w: lax.cond(finite(w), elementwise, lambda x, w: x, x, w))),
    }
    programs["elementwise 8x256x56x56"] = programs["elementwise 8x64x56x56"]
    arguments = {name: (big, w) if "256" in name else (x, w) for name in programs}
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, medians of 7 calls (ms), rounds interleaved\n")
    print("| work | plain | inside lax.cond | ratio |")
    print("|---|---|---|---|")
    for name, (plain, guarded) in programs.items():
        rows = [(median_ms(plain, *arguments[name]), median_ms(guarded, *arguments[name]))
                for _ in range(args.rounds)]
        p, g = [r[0] for r in rows], [r[1] for r in rows]
        print(f"| {name} | {min(p):.2f}-{max(p):.2f} | {min(g):.2f}-{max(g):.2f} | "
              f"{min(g) / max(p):.1f}-{max(g) / min(p):.1f}x |", flush=True)


if __name__ == "__main__":
    main()
