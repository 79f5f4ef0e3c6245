"""The benchmark command still runs end to end (a two-layer subset, quick timing) and writes its three files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_command_writes_json_markdown_and_plot(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run.py"), "--only",
                           "resnet50_1x1,dw_up", "--quick", "--out", str(out)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "XLA_FLAGS": "--xla_cpu_enable_fast_math=false",
                                            "GLIBC_TUNABLES": ""})  # the report names the settings that are set
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert set(rows) == {"resnet50_1x1", "dw_up_k4s2"}
    assert rows["resnet50_1x1"]["auto"] == "matmul" and rows["dw_up_k4s2"]["auto"] == "phase"
    for row in rows.values():
        assert {"lax", "auto", "xla"} <= set(row["times"]), row["times"].keys()
        assert all(t["fwd_ms"] > 0 and t["fwd_bwd_ms"] > 0 for k, t in row["times"].items()), row["times"]
        # XLA:CPU reports each program's scratch; its size decides the page faults the README describes.
        assert set(row["fwd_bwd_temp_MB"]) == set(row["times"]) - {"auto", "torch"}, row["fwd_bwd_temp_MB"]
        assert all(mb >= 0 for mb in row["fwd_bwd_temp_MB"].values()), row["fwd_bwd_temp_MB"]
    for row in rows.values():  # each median comes with the minimum and quartiles of its samples
        for times in row["times"].values():
            s = times["spread"]["fwd_bwd_ms"]
            assert s["min"] <= s["q1"] <= s["q3"] and s["min"] <= times["fwd_bwd_ms"], times
    assert report["complete"] is True
    assert "vjp" in rows["dw_up_k4s2"]["times"]  # the transposed-conv alternative is timed beside phase
    assert report["ceilings"]["copy_GBps"] > 0 and report["ceilings"]["matmul_TFLOPs"] > 0
    assert report["host_cpu"] and report["host_cpu"] in (tmp_path / "bench.md").read_text()
    assert report["command"].split(" python ")[0] == "XLA_FLAGS=--xla_cpu_enable_fast_math=false", report["command"]
    markdown = (tmp_path / "bench.md").read_text()
    assert "| resnet50_1x1 float32 NCHW | matmul |" in markdown and "spread (lax; auto)" in markdown
    assert "Incomplete" not in markdown
    assert (tmp_path / "bench.png").stat().st_size > 1000


def test_sweep_draws_only_valid_configurations_and_flags_the_slower_rows():
    """benchmarks/sweep.py: every random shape is a configuration jconv accepts (so a sweep never stops on a
    ValueError), the draws cover the kinds and dtypes it names, and its table flags auto / lax over 1.05."""
    import random

    import jax

    import jconv

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import sweep

    rng, kinds, dtypes, lowerings = random.Random(0), set(), set(), set()
    for index in range(300):
        case = sweep.random_case(rng, index)
        x = jax.ShapeDtypeStruct(case.input_shape if not case.channels_last else
                                 (case.input_shape[0], *case.input_shape[2:], case.input_shape[1]), case.dtype)
        w = jax.ShapeDtypeStruct(case.weight_shape, case.dtype)
        choice = jconv.explain(getattr(jconv, case.fn), x, w, None, channels_last=case.channels_last,
                               **case.options)
        kinds.add(case.name.split("_", 1)[1])
        dtypes.add(case.dtype)
        lowerings.add(choice.lowering)
    assert kinds == {"depthwise", "multiplier", "grouped", "pointwise", "dense_3d", "transposed",
                     "transposed_grouped", "transposed_depthwise"}
    assert dtypes == {"float32", "bfloat16", "float16"}
    assert {"taps", "grouped", "matmul", "planes", "phase"} <= lowerings
    row = dict(layer="0_pointwise float32 NCHW", fn="conv2d", input=(1, 8, 4, 4), weight=(8, 8, 1, 1),
               options={}, lowering="matmul", auto_ms=1.2, lax_ms=1.0, ratio=1.2)
    report = dict(platform="cpu", jax=jax.__version__, date="today", command="c", machine="m", cpus=2, seed=0,
                  rows=[row, {**row, "auto_ms": 0.5, "ratio": 0.5}])
    table = sweep.markdown(report)
    assert "| 1.20 **slower** | matmul |" in table and "| 0.50 | matmul |" in table
    assert "Over 1.05x (slower than lax): 1." in table


def test_reports_are_written_per_layer_and_never_over_committed_results(tmp_path):
    """run.py writes its report after every layer (marked incomplete until the last), and its default output is a
    path git ignores, so a plain run cannot overwrite the committed results."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import run
    import suites

    written = []
    report = run.run([c for c in suites.SUITES["cpu"] if c.name == "resnet50_1x1"], quick=True, progress=False,
                     on_layer=lambda partial: written.append(run.write_report(partial, str(tmp_path / "b"), False)))
    assert len(written) == 1 and report["complete"]
    partial = dict(report, complete=False)
    assert "Incomplete" in run.markdown(partial)
    out = run.default_out("cpu")
    assert os.path.basename(out) == "latest_cpu"
    ignored = subprocess.run(["git", "check-ignore", "-q", out + ".md"], cwd=ROOT)
    assert ignored.returncode == 0, f"{out}.md is not ignored by git"


def test_sweep_plot(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import sweep

    rows = [dict(layer=f"{i}_x float32 NCHW", lowering=name, ratio=r) for i, (name, r) in
            enumerate([("taps", 0.1), ("phase", 0.5), ("matmul", 1.2)])]
    assert sweep.plot(dict(platform="cpu", seed=0, date="today", rows=rows), str(tmp_path / "s.png"))
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_autotune_sweep_table_flags_rows_off_lax_and_off_the_best():
    """sweep.py --autotune: a row over 1.05x lax or over 1.05x the best candidate timed beside it is flagged, and
    the tuning seconds are summarized."""
    import jax

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import sweep

    row = dict(layer="0_depthwise float32 NCHW", fn="conv2d", input=(1, 8, 4, 4), weight=(8, 1, 3, 3), options={},
               lowering="taps:summed", auto_ms=1.2, lax_ms=1.0, ratio=1.2, best_ms=1.0, best_ratio=1.2,
               runners_up={"taps:per-tap-loop": 1.0}, tuning_s=4.0, candidates=6)
    fast = dict(row, auto_ms=0.5, ratio=0.5, best_ms=0.5, best_ratio=1.0, tuning_s=2.0)
    report = dict(platform="cpu", jax=jax.__version__, date="today", command="c", machine="m", cpus=2, seed=0,
                  rows=[row, fast], autotune=True)
    table = sweep.markdown(report)
    assert "| 1.20 **slower** | 1.20 **off best** | taps:summed (6) | 4.0 |" in table
    assert "| 0.50 | 1.00 | taps:summed (6) | 2.0 |" in table
    assert "Over 1.05x lax: 1. Over 1.05x the best timed here (auto, lax or a runner-up): 1." in table
    assert "median 3.0, min 2.0, max 4.0, total 6" in table
