"""What the non-finite branch (jconv.lowerings.common.with_exact_fallback) costs a lowering when every value is finite.

For each transposed layer of the CPU suite, phase's fast form alone and the same form behind the branch (forced on,
whichever forward phase picks), forward and forward+backward, timed round-robin in one process
(run.py's interleaved_medians; median, and minimum with the interquartile range, ms).

    python benchmarks/exact_fallback.py [--rounds 8]
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jconv.lowerings import phase, xla  # noqa: E402
from jconv.lowerings.common import with_exact_fallback  # noqa: E402
from run import interleaved_pairs, jconv_spec, make_arrays  # noqa: E402
from suites import SUITES  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    guarded = with_exact_fallback(phase._fast, xla.lower, guard_input=False)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {args.rounds} rounds interleaved; median "
          "(min, q1-q3) ms\n")
    print("| layer | phase forward | fast form | behind the branch | fast fwd+bwd | behind the branch |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for case in (c for c in SUITES["cpu"] if c.transposed):
        x, w = make_arrays(case, rng)
        spec = jconv_spec(case, x, w)
        t = interleaved_pairs({"fast": lambda x, w: phase._fast(spec, x, w),
                               "guarded": lambda x, w: guarded(spec, x, w)}, x, w, args.rounds)
        cell = lambda k: t[k].ms()
        form = "matmul" if phase.matmul_forward(spec) else "conv"
        print(f"| {case.label()} | {form} | {cell(('fast', 'fwd'))} | {cell(('guarded', 'fwd'))} | "
              f"{cell(('fast', 'fb'))} | {cell(('guarded', 'fb'))} |", flush=True)


if __name__ == "__main__":
    main()
