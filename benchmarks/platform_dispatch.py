"""What choosing per platform (jconv.dispatch.lower: one jax.lax.platform_dependent branch per platform) costs
on CPU.

For each layer of the CPU suite where auto picks a lowering other than lax's, auto (the per-platform choice,
lowered for CPU) against the same lowering named explicitly (traced alone, no branches), forward and
forward+backward, timed round-robin in one process (run.py's interleaved_medians; median, and minimum with the
interquartile range, ms). A ratio above 1 is what the per-platform choice costs.

    python benchmarks/platform_dispatch.py [--rounds 8]
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import jax
import numpy as np

import jconv

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import interleaved_pairs, jconv_spec, make_arrays  # noqa: E402
from suites import SUITES  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {args.rounds} rounds interleaved; median "
          "(min, q1-q3) ms\n")
    print("| layer | auto picks | named, fwd | auto, fwd | ratio | named, fwd+bwd | auto, fwd+bwd | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for case in SUITES["cpu"]:
        x, w = make_arrays(case, rng)
        named = jconv.dispatch.select(jconv_spec(case, x, w), "cpu").lowering
        if named == "xla":  # one branch for every platform: nothing to compare
            continue
        fn = getattr(jconv, case.fn)
        functions = {key: functools.partial(fn, channels_last=case.channels_last, lowering=lowering, **case.options)
                     for key, lowering in (("named", named), ("auto", "auto"))}
        t = interleaved_pairs({key: lambda x, w, f=f: f(x, w) for key, f in functions.items()}, x, w, args.rounds)
        cell = lambda k: t[k].ms()
        ratio = lambda m: f"{t['auto', m].median / t['named', m].median:.2f}"
        print(f"| {case.label()} | {named} | {cell(('named', 'fwd'))} | {cell(('auto', 'fwd'))} | {ratio('fwd')} | "
              f"{cell(('named', 'fb'))} | {cell(('auto', 'fb'))} | {ratio('fb')} |", flush=True)


if __name__ == "__main__":
    main()
