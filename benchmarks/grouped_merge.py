"""Grouped convolution's weight gradient with m groups merged per dense conv, every m side by side.

The grouped lowering computes the forward and the input gradient one dense conv per group; its weight gradient
can merge m groups into one dense conv with a block-diagonal kernel (jconv/lowerings/grouped.py). This times the
forward+backward (output and gradients w.r.t. input and weight) of every m that divides the groups, up to
--max-merged input channels per merged conv, round-robin in one process (run.py's
interleaved_medians), over random grouped shapes (--seed) and the suite's grouped layers. Median ms with
[q1-q3]; "rule" is the m that groups_per_conv picks, "best" the fastest m.

    python benchmarks/grouped_merge.py --seed 11 --count 30 --out benchmarks/results/grouped_merge_cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jconv.lowerings import grouped  # noqa: E402
from run import command_line, host_cpu, interleaved_medians, jax_pair, jax_sync, jconv_spec, make_arrays  # noqa: E402
from suites import SUITES, case  # noqa: E402


def random_case(rng: random.Random, index: int):
    """A grouped 1-D, 2-D or 3-D conv with 2-32 input channels per group, the sizes of real layers."""
    ndim = rng.choices((1, 2, 3), weights=(2, 6, 1))[0]
    in_per_group = rng.choice((2, 4, 8, 16, 32))
    groups = rng.choice([g for g in (2, 4, 8, 16, 32) if g * in_per_group <= 512])
    out_per_group = in_per_group * rng.choice((1, 1, 2))
    size = {1: (256, 1024, 4096), 2: (7, 14, 28, 56), 3: (8, 12, 16)}[ndim]
    spatial = (rng.choice(size),) * ndim
    batch = rng.choice((1, 2, 4, 8))
    k = rng.choice({1: (3, 5, 7), 2: (3, 3, 5), 3: (3,)}[ndim])
    # "same" padding, none, or "full" (k - 1), as the phase convs of a transposed conv have.
    padding = rng.choice((k // 2, k // 2, 0, k - 1))
    stride = rng.choice((1, 1, 2))
    channels = in_per_group * groups
    return case(f"g{index}", f"conv{ndim}d", (batch, channels, *spatial),
                (out_per_group * groups, in_per_group, *(k,) * ndim),
                dtype=rng.choice(("float32", "bfloat16")), channels_last=rng.random() < 0.5,
                padding=padding, stride=stride, groups=groups)


def merge_counts(spec, max_merged: int) -> list:
    return [m for m in range(1, spec.groups + 1)
            if spec.groups % m == 0 and m * spec.in_per_group <= max(max_merged, spec.in_per_group)]


def measure(layer, max_merged: int, rounds: int, rng) -> dict:
    x, w = make_arrays(layer, rng)
    spec = jconv_spec(layer, x, w)
    functions = {}
    for m in merge_counts(spec, max_merged):
        functions[m] = lambda x, w, s=dataclasses.replace(spec, variant=f"merge-{m}"): grouped.lower(s, x, w)
    calls = {}
    for key, f in functions.items():
        calls[key] = (jax_pair(f, x, w)[1], jax_sync)
    t = interleaved_medians(calls, rounds=rounds)
    ms = {str(k): {"median": v.median * 1e3, "q1": v.q1 * 1e3, "q3": v.q3 * 1e3} for k, v in t.items()}
    best = min(t, key=lambda k: t[k].median)
    return {"case": layer.label(), "fn": layer.fn, "input": list(layer.input_shape),
            "weight": list(layer.weight_shape), "options": layer.options, "groups": spec.groups,
            "in_per_group": spec.in_per_group, "out_per_group": spec.out_per_group,
            "rule": grouped.groups_per_conv(spec), "best": best, "ms": ms}


def markdown(report: dict) -> str:
    lines = [f"# Grouped weight gradient, groups merged per dense conv ({report['device']})", "",
             f"Command: `{report['command']}`. jax {report['jax']}. Forward+backward median ms [q1-q3], every "
             "merge count m timed round-robin per row; rule/best is the rule's m against the fastest m.", "",
             "| layer | input | weight | options | in/group | rule m | best m | rule / best | m=1 / best | "
             "times per m |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    if any("previous_rule" in row for row in report["rows"]):
        lines[2:2] = ["The rule was changed after this run; \"previous rule\" is the one that ran then, \"rule\" the "
                      "current one, both computed from the shape (`--rerule` rewrites them from a saved run).", ""]
        lines[-2] = lines[-2].replace("rule m |", "rule m | previous rule m | previous / best |", 1)
        lines[-1] += "---|---|"
    for row in report["rows"]:
        ms = row["ms"]
        cell = lambda k: f"{ms[k]['median']:.2f} [{ms[k]['q1']:.2f}-{ms[k]['q3']:.2f}]"
        per_m = "; ".join(f"{k}: {cell(k)}" for k in ms)
        best = ms[str(row["best"])]["median"]
        previous = "" if "previous_rule" not in row else \
            f"{row['previous_rule']} | {ms[str(row['previous_rule'])]['median'] / best:.2f} | "
        lines.append(f"| {row['case']} | {tuple(row['input'])} | {tuple(row['weight'])} | {row['options']} | "
                     f"{row['in_per_group']} | {row['rule']} | {previous}{row['best']} | "
                     f"{ms[str(row['rule'])]['median'] / best:.2f} | {ms['1']['median'] / best:.2f} | {per_m} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-merged", type=int, default=64, help="most input channels in one merged conv")
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    parser.add_argument("--rerule", action="store_true",
                        help="measure nothing: recompute the rule's m in <out>.json (keeping the one that ran as "
                             "previous_rule) and rewrite <out>.md")
    args = parser.parse_args()
    if args.rerule:
        with open(args.out + ".json") as f:
            report = json.load(f)
        for row in report["rows"]:
            dtype, layout = row["case"].split()[-2:]
            layer = case(row["case"], row["fn"], row["input"], row["weight"], dtype=dtype,
                         channels_last=layout != "NCHW", **row["options"])
            rule = grouped.groups_per_conv(jconv_spec(layer, *make_arrays(layer, np.random.default_rng(0))))
            row.setdefault("previous_rule", row["rule"])
            row["rule"] = rule
        with open(args.out + ".json", "w") as f:
            json.dump(report, f, indent=1)
        with open(args.out + ".md", "w") as f:
            f.write(markdown(report))
        return
    rng = random.Random(args.seed)
    layers = [layer for layer in SUITES["cpu"] if dict(layer.kwargs).get("groups", 1) > 1
              and layer.weight_shape[1] > 1 and not layer.transposed]
    layers += [case("phase_of_transposed_g8", "conv2d", (8, 32, 56, 56), (32, 4, 3, 3), dtype="bfloat16", padding=2,
                    groups=8)]
    layers += [random_case(rng, i) for i in range(args.count)]
    report = {"device": f"{jax.devices()[0].platform}, {host_cpu()}", "jax": jax.__version__,
              "command": command_line(), "rows": []}
    arrays = np.random.default_rng(0)
    for index, layer in enumerate(layers, 1):
        row = measure(layer, args.max_merged, args.rounds, arrays)
        report["rows"].append(row)
        ms = row["ms"]
        print(f"[{index}/{len(layers)}] {row['case']} {row['input']} {row['weight']} rule {row['rule']} best "
              f"{row['best']} " + " ".join(f"{k}={v['median']:.2f}" for k, v in ms.items()), flush=True)
        if args.out:
            with open(args.out + ".json", "w") as f:
                json.dump(report, f, indent=1)
            with open(args.out + ".md", "w") as f:
                f.write(markdown(report))


if __name__ == "__main__":
    main()
