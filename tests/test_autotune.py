"""Measured dispatch (jconv.autotune): the cache across processes, concurrent writers, a corrupt file, broken
candidates, deterministic mode, explain, tune/report, and the transformations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jconv
from jconv import dispatch, tuning
from jconv.lowerings import xla

pytestmark = pytest.mark.xdist_group("autotune")  # subprocesses and process-wide state: one worker

BUDGET = 0.05  # seconds of timing rounds per spec: the tests check what is chosen and kept, not how fast


def rand(*shape, seed=0, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape, dtype)


# A small depthwise conv: xla and taps' and grouped's variants accept it (six candidates, quick to compile).
X, W = rand(2, 4, 33), rand(4, 1, 3, seed=1)
KW = dict(groups=4, padding=1)


@pytest.fixture
def cache_dir(tmp_path):
    with jconv.autotune(True, cache_dir=tmp_path, budget_s=BUDGET):
        yield tmp_path


def entries(path) -> dict:
    with open(os.path.join(path, tuning.CACHE_FILE)) as f:
        return json.load(f)["entries"]


def run_python(code: str, cache: str, **env) -> str:
    environment = {**os.environ, "JCONV_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu", **env}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environment, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_measures_once_and_chooses_the_fastest_it_measured(cache_dir):
    y = jconv.conv1d(X, W, **KW)
    choice = jconv.explain(jconv.conv1d, X, W, **KW)
    entry = choice.entry
    assert entry is not None and choice.reason == "autotune (train): measured in this process"
    assert entry.time_s == min(entry.times_s.values())
    assert f"{choice.lowering}:{choice.variant}" == min(entry.times_s, key=entry.times_s.get)
    assert entry.lax_time_s == entry.times_s["xla:default"]
    np.testing.assert_allclose(y, jax.lax.conv_general_dilated(X, W, (1,), [(1, 1)], feature_group_count=4),
                               rtol=1e-5, atol=1e-5)
    assert len(entries(cache_dir)) == 1
    jconv.conv1d(X, W, **KW)  # the same spec again: read from memory, nothing measured or written
    assert len(entries(cache_dir)) == 1 and jconv.explain(jconv.conv1d, X, W, **KW).entry is entry


def test_explain_lists_every_lowering_and_variant(cache_dir):
    jconv.conv1d(X, W, **KW)
    choice = jconv.explain(jconv.conv1d, X, W, **KW)
    assert {c.lowering for c in choice.candidates} == set(jconv.LOWERING_NAMES)
    for c in choice.candidates:
        module = dispatch.LOWERINGS[c.lowering]
        if c.refusal is None:
            assert c.variant in module.variants(choice.spec) and c.time_s is not None
        elif c.variant is None:
            assert c.refusal == (module.refusal(choice.spec) or f"not timed by autotune: "
                                                                 f"{module.tuning_refusal(choice.spec)}")
    text = str(choice)
    assert f"* {choice.lowering}:{choice.variant}:" in text and "matmul: refused: needs a kernel of size 1" in text


def test_explain_without_autotune_lists_the_rules_choice_and_its_variants():
    choice = jconv.explain(jconv.conv1d, X, W, **KW)
    assert choice.entry is None and choice.lowering == "taps" and choice.variant == "summed"
    accepted = {f"{c.lowering}:{c.variant}" for c in choice.candidates if c.refusal is None}
    assert {"xla:default", "taps:summed", "taps:per-tap-loop", "grouped:merge-1"} <= accepted


def test_lowering_autotune_on_one_call_and_through_a_flax_module(tmp_path):
    with jconv.autotune(False, cache_dir=tmp_path, budget_s=BUDGET):
        jconv.conv1d(X, W, **KW)
        assert not os.path.exists(tmp_path / tuning.CACHE_FILE)  # autotune off: the rules, nothing measured
        jconv.conv1d(X, W, lowering="autotune", **KW)
        assert len(entries(tmp_path)) == 1
        nnx = pytest.importorskip("flax.nnx")
        layer = jconv.nn.Conv1d(3, 5, 3, lowering="autotune", rngs=nnx.Rngs(0))
        layer(rand(2, 3, 16))
        assert len(entries(tmp_path)) == 2


def test_broken_candidates_are_dropped_with_their_reason(cache_dir, monkeypatch):
    """A candidate that returns wrong numbers or raises costs a log line, never a wrong result."""
    right = dispatch._candidate_lowering

    def wrong_numbers(spec, x, w):
        return xla.lower(spec, x, w) * 1.01

    def raises(spec, x, w):
        raise NotImplementedError("this kernel does not build here")

    broken = {("taps", "summed"): wrong_numbers, ("taps", "per-tap-loop"): raises}
    monkeypatch.setattr(dispatch, "_candidate_lowering", lambda name, variant: broken.get((name, variant)) or
                        right(name, variant))
    jconv.conv1d(X, W, **KW)
    choice = jconv.explain(jconv.conv1d, X, W, **KW)
    dropped = choice.entry.dropped
    assert dropped["taps:summed"].startswith("differs from lax: relative error 1.00e-02")
    assert dropped["taps:per-tap-loop"] == "failed: NotImplementedError: this kernel does not build here"
    assert (choice.lowering, choice.variant) not in broken
    listed = {f"{c.lowering}:{c.variant}": c for c in choice.candidates}
    assert listed["taps:summed"].refusal == dropped["taps:summed"]


def test_without_lax_as_reference_nothing_is_chosen_unverified(cache_dir, monkeypatch):
    right = dispatch._candidate_lowering

    def raises(spec, x, w):
        raise MemoryError("lax's convolution ran out of memory")

    monkeypatch.setattr(dispatch, "_candidate_lowering", lambda name, variant: raises if name == "xla" else
                        right(name, variant))
    jconv.conv1d(X, W, **KW)
    choice = jconv.explain(jconv.conv1d, X, W, **KW)
    assert choice.entry is None and choice.lowering == "taps"  # the rules
    assert choice.reason.startswith("autotune: lax's convolution failed, so no candidate could be checked")
    assert not os.path.exists(cache_dir / tuning.CACHE_FILE)


def test_corrupt_cache_file_warns_and_is_ignored(cache_dir):
    path = cache_dir / tuning.CACHE_FILE
    path.write_text("{ not json")
    with pytest.warns(RuntimeWarning, match="unreadable cache file"):
        jconv.conv1d(X, W, **KW)
    assert len(entries(cache_dir)) == 1  # replaced by a valid file holding the new entry
    assert len(jconv.autotune_cache(cache_dir)) == 1


def test_cache_object_export_merge_and_clear(cache_dir, tmp_path_factory):
    jconv.conv1d(X, W, **KW)
    cache = jconv.autotune_cache()
    assert len(cache) == 1 and cache.path == str(cache_dir / tuning.CACHE_FILE)
    shipped = tmp_path_factory.mktemp("shipped") / "tuned.json"
    assert cache.export(shipped) == 1
    cache.clear()
    assert len(cache) == 0
    assert cache.merge(shipped) == 1 and cache.entries() == json.loads(shipped.read_text())["entries"]
    choice = jconv.explain(jconv.conv1d, X, W, **KW)
    assert choice.entry.source == "cache" and choice.reason == "autotune (train): from the cache"


def test_autotune_arguments_are_checked():
    with pytest.raises(ValueError, match="mode must be one of"):
        jconv.autotune(True, mode="inference")
    with pytest.raises(ValueError, match="budget_s must be a positive number"):
        jconv.autotune(True, budget_s=0)
    with pytest.raises(TypeError, match="enabled must be a bool"):
        jconv.autotune("yes")
    with pytest.raises(ValueError, match="unknown lowering='taps:'"):
        jconv.conv1d(X, W, lowering="taps:", **KW)
    with pytest.raises(ValueError, match=r"has no variant 'banded2'.*'summed'"):
        jconv.conv1d(X, W, lowering="taps:banded2", **KW)


def test_context_manager_restores_the_previous_state(tmp_path):
    assert not tuning.is_enabled()
    with jconv.autotune(True, mode="forward", cache_dir=tmp_path):
        assert tuning.is_enabled() and tuning.state_key()[1] == "forward"
        with jconv.autotune(False):
            assert not tuning.is_enabled()
        assert tuning.is_enabled() and tuning.cache_path() == str(tmp_path / tuning.CACHE_FILE)
    assert not tuning.is_enabled()


def test_forward_mode_is_its_own_entry(cache_dir):
    jconv.conv1d(X, W, **KW)
    with jconv.autotune(True, mode="forward", cache_dir=cache_dir, budget_s=BUDGET):
        jconv.conv1d(X, W, **KW)
    modes = sorted(key.split(" | ")[2] for key in entries(cache_dir))
    assert modes == ["forward", "train"]


def test_jit_vmap_and_grad_with_autotune_on(cache_dir):
    def loss(x, w):
        return jnp.sum(jconv.conv1d(x, w, **KW) ** 2)

    def reference(x, w):
        return jnp.sum(jax.lax.conv_general_dilated(x, w, (1,), [(1, 1)], feature_group_count=4) ** 2)

    got = jax.jit(jax.grad(loss, (0, 1)))(X, W)
    for g, e in zip(got, jax.grad(reference, (0, 1))(X, W)):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
    # vmap over single samples: the batch that runs is the mapped one, so the entry is the batched spec's.
    before = set(entries(cache_dir))
    y = jax.vmap(lambda x: jconv.conv1d(x, W, **KW))(X)
    np.testing.assert_allclose(y, jconv.conv1d(X, W, **KW), rtol=1e-5, atol=1e-5)
    assert set(entries(cache_dir)) == before


def test_export_for_another_platform_never_measures(cache_dir):
    """Lowering for cuda from this CPU host: the gpu branch takes the rules (no cache entry), and only the
    local platform's branch is measured."""
    exported = jax.export.export(jax.jit(lambda x, w: jconv.conv1d(x, w, **KW)), platforms=["cuda"])(X, W)
    assert "convolution" in exported.mlir_module()  # the GPU's rule: lax's own convolution
    assert all(key.startswith("cpu | ") for key in entries(cache_dir))


def test_tune_and_report_a_whole_program(cache_dir):
    def model(x, w1, w2):
        return jconv.conv1d(jax.nn.relu(jconv.conv1d(x, w1, **KW)), w2)

    w2 = rand(6, 4, 1, seed=2)
    shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (X, W, w2)]
    before = jconv.report(model, *shapes)
    assert [r.source for r in before] == ["rules", "rules"] and before[0].lowering == "taps"
    tuned = jconv.tune(model, *shapes)
    assert [r.source for r in tuned] == ["measured", "measured"]
    assert all(r.time_s and r.lax_time_s and r.speedup == r.lax_time_s / r.time_s for r in tuned)
    assert [r.source for r in jconv.report(model, *shapes)] == ["measured", "measured"]  # this process's
    tuning._memo.clear()  # as a new process would: from the cache file
    after = jconv.report(model, *shapes)
    assert [(r.lowering, r.variant, r.source) for r in after] == [(r.lowering, r.variant, "cache") for r in tuned]
    text = str(after)
    assert text.splitlines()[0].split() == ["op", "input", "weight", "dtype", "lowering", "source", "ms", "lax",
                                            "ms", "speed-up"]
    assert "2x4x33" in text and "6x4x1" in text


def test_a_second_process_measures_nothing_and_deterministic_processes_agree(tmp_path):
    """Process 1 tunes; processes 2 and 3 (deterministic mode, autotune on) read its cache, measure nothing, and
    compute bitwise the same output and gradients."""
    code = """
        import hashlib, jax, jax.numpy as jnp, numpy as np, jconv
        x = jax.random.normal(jax.random.key(0), (2, 4, 33)); w = jax.random.normal(jax.random.key(1), (4, 1, 3))
        with jconv.autotune(True, budget_s=0.05):
            f = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(jconv.conv1d(x, w, groups=4, padding=1) ** 2), (0, 1)))
            out = f(x, w)
            c = jconv.explain(jconv.conv1d, x, w, groups=4, padding=1)
        digest = hashlib.sha256(b"".join(np.asarray(a).tobytes() for a in jax.tree.leaves(out))).hexdigest()
        print(c.lowering, c.variant, c.entry.source if c.entry else "none", digest)
    """
    first = run_python(code, tmp_path).split()
    assert first[2] == "measured"
    mtime = os.stat(tmp_path / tuning.CACHE_FILE).st_mtime_ns
    second = run_python(code, tmp_path, JCONV_DETERMINISTIC="1").split()
    third = run_python(code, tmp_path, JCONV_DETERMINISTIC="1").split()
    assert second[:2] == first[:2] and second[2] == "cache" and second == third
    assert os.stat(tmp_path / tuning.CACHE_FILE).st_mtime_ns == mtime  # nothing written


def test_deterministic_mode_never_measures(tmp_path):
    out = run_python("""
        import jax, jconv
        x = jax.numpy.ones((2, 4, 33)); w = jax.numpy.ones((4, 1, 3))
        with jconv.autotune(True):
            jconv.conv1d(x, w, groups=4, padding=1)
            print(jconv.explain(jconv.conv1d, x, w, groups=4, padding=1).reason)
    """, tmp_path, JCONV_DETERMINISTIC="1")
    assert "deterministic mode never measures" in out and "depthwise on CPU" in out
    assert not os.path.exists(tmp_path / tuning.CACHE_FILE)


def test_concurrent_writers_leave_a_valid_cache_with_every_entry(tmp_path):
    code = """
        import sys
        from jconv import tuning
        for i in range(40):
            tuning.record(f"key {sys.argv[1]} {i}", tuning.Entry("xla", "default", 1.0, 1.0, {}, {}, 0.0))
    """
    environment = {**os.environ, "JCONV_CACHE_DIR": str(tmp_path), "JAX_PLATFORMS": "cpu"}
    writers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(p)], env=environment)
               for p in range(4)]
    assert [p.wait(timeout=300) for p in writers] == [0] * 4
    assert set(entries(tmp_path)) == {f"key {p} {i}" for p in range(4) for i in range(40)}


def test_the_shard_each_device_runs_is_what_is_tuned(tmp_path):
    out = run_python("""
        import json, jax, numpy as np, jconv
        from jax.sharding import NamedSharding, PartitionSpec as P
        mesh = jax.make_mesh((4,), ("data",))
        x = jax.random.normal(jax.random.key(0), (8, 4, 33)); w = jax.random.normal(jax.random.key(1), (4, 1, 3))
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        with jconv.autotune(True, budget_s=0.05):
            y = jconv.conv1d(xs, w, groups=4, padding=1)
        np.testing.assert_allclose(y, jconv.conv1d(x, w, groups=4, padding=1), rtol=1e-5, atol=1e-5)
        print(json.dumps([json.loads(k.split(" | ")[-1])["batch"] for k in jconv.autotune_cache().entries()]))
    """, tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    assert json.loads(out) == ["2"]
