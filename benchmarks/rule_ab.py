"""Auto with and without one of its rules, side by side: does the rule still win on this machine?

For every layer of the CPU suite and of a set of shapes no rule was fitted to where the rule's lowering would be
picked (directly, or for an inner conv of phase, dilated or planes), auto's forward+backward is compiled twice,
with jconv.dispatch.RULES as they are and with the rules for that lowering taken out, and both programs are timed
round-robin in one process (run.py's interleaved_medians). Median ms, with [q1-q3] and the ratio.

    python benchmarks/rule_ab.py --lowering im2col [--rounds 7]

To test a rule that is no longer in the table, pass --restore: the rule is put back (from dispatch.RETIRED_RULES)
for the "with" side.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jconv  # noqa: E402
from jconv import dispatch  # noqa: E402
from run import host_cpu, interleaved_medians, jax_pair, jax_sync, make_arrays  # noqa: E402
from suites import SUITES, case  # noqa: E402

# Dense and 3-D shapes outside the suite (other channel counts, sizes, layouts and dilations).
OFF_SUITE = [
    case("dense_3x3_28", "conv2d", (8, 128, 28, 28), (128, 128, 3, 3), padding=1),
    case("dense_3x3_14", "conv2d", (8, 256, 14, 14), (256, 256, 3, 3), padding=1),
    case("dense_3x3_32", "conv2d", (16, 96, 32, 32), (96, 96, 3, 3), padding=1),
    case("dense_3x3_40", "conv2d", (4, 100, 40, 40), (100, 100, 3, 3), padding=1),
    case("dense_3x3_d2", "conv2d", (4, 96, 40, 40), (96, 96, 3, 3), padding=2, dilation=2),
    case("dense_5x5", "conv2d", (8, 64, 28, 28), (64, 64, 5, 5), padding=2),
    case("dense_3x3_28", "conv2d", (8, 128, 28, 28), (128, 128, 3, 3), channels_last=True, padding=1),
    case("dense_3x3_56", "conv2d", (8, 64, 56, 56), (64, 64, 3, 3), channels_last=True, padding=1),
    case("dense_3x3x3", "conv3d", (2, 32, 16, 24, 24), (48, 32, 3, 3, 3), padding=1),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lowering", required=True, help="take out the rules picking this lowering")
    parser.add_argument("--restore", action="store_true", help="the rule is retired: put it back for 'with'")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    shipped = dispatch.RULES
    if args.restore:
        with_rules = dispatch.RULES[:-1] + tuple(r for r in dispatch.RETIRED_RULES if r.lowering == args.lowering) \
            + dispatch.RULES[-1:]
    else:
        with_rules = dispatch.RULES
    without_rules = tuple(r for r in with_rules if r.lowering != args.lowering)
    assert with_rules != without_rules, f"no rule picks {args.lowering!r}"
    print(f"jax {jax.__version__}, {host_cpu()}, {args.rounds} rounds interleaved; auto forward+backward, median "
          f"[q1-q3] ms, with and without the {args.lowering} rule\n")
    print("| layer | with | without | without / with |")
    print("|---|---|---|---|")
    rng = np.random.default_rng(0)
    for layer in [*SUITES["cpu"], *OFF_SUITE]:
        x, w = make_arrays(layer, rng)
        f = lambda x, w, layer=layer: getattr(jconv, layer.fn)(x, w, channels_last=layer.channels_last,
                                                               **layer.options)
        calls, programs = {}, {}
        for side, rules in (("with", with_rules), ("without", without_rules)):
            dispatch.RULES = rules
            try:
                _, fb, programs[side], _ = jax_pair(f, x, w)
            finally:
                dispatch.RULES = shipped
            calls[side] = (fb, jax_sync)
        if programs["with"] == programs["without"]:
            continue  # the rule does not reach this layer
        t = interleaved_medians(calls, rounds=args.rounds)
        cell = lambda k: f"{t[k].median * 1e3:.1f} [{t[k].q1 * 1e3:.1f}-{t[k].q3 * 1e3:.1f}]"
        print(f"| {layer.label()} | {cell('with')} | {cell('without')} | "
              f"{t['without'].median / t['with'].median:.2f} |", flush=True)


if __name__ == "__main__":
    main()
