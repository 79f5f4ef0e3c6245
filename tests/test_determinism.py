"""Deterministic mode: XLA_FLAGS handling (in fresh subprocesses, since XLA reads its flags once per process),
the scoped deterministic_jit, dispatch restrictions, and bitwise-reproducible results."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest

import jconv
from jconv import determinism, dispatch

FLAG = "--xla_gpu_deterministic_ops=true"


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", determinism.ENV_VAR)}
    full_env.update(env)
    full_env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True,
                          text=True, timeout=300)


def ok(code: str, **env) -> str:
    proc = run_python(code, **env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# The subprocesses also check that the flag reached XLA: a compilation dumps its DebugOptions.
REACHED_XLA = """
import glob, tempfile
import jax
def option_reached_xla(fn, *args):
    d = tempfile.mkdtemp()
    jax.jit(fn, compiler_options={"xla_dump_to": d}).lower(*args).compile()
    text = "".join(open(p).read() for p in glob.glob(d + "/*debug_options"))
    return "xla_gpu_deterministic_ops: true" in text
"""


def test_enabling_before_backend_start_sets_the_flag_and_xla_sees_it():
    out = ok(REACHED_XLA + textwrap.dedent("""
        import os, jax.numpy as jnp, jconv
        jconv.use_deterministic_algorithms(True)
        print(os.environ["XLA_FLAGS"])
        print(jconv.are_deterministic_algorithms_enabled())
        print(option_reached_xla(lambda x: x + 1, jnp.ones(3)))
    """))
    assert out.strip().split("\n") == [FLAG, "True", "True"]


def test_without_the_mode_xla_does_not_see_the_flag():
    out = ok("import jax, jax.numpy as jnp, jconv\n" + REACHED_XLA +
             "print(option_reached_xla(lambda x: x + 1, jnp.ones(3)))")
    assert out.strip() == "False"


def test_user_flags_are_preserved_and_never_duplicated():
    out = ok("""
        import os, jconv
        jconv.use_deterministic_algorithms(True)
        jconv.use_deterministic_algorithms(True)
        print(os.environ["XLA_FLAGS"])
        jconv.use_deterministic_algorithms(False)
        print(os.environ["XLA_FLAGS"])
    """, XLA_FLAGS="--xla_cpu_enable_fast_math=false  --xla_force_host_platform_device_count=2")
    enabled, disabled = out.strip().split("\n")
    assert enabled.split() == ["--xla_cpu_enable_fast_math=false", "--xla_force_host_platform_device_count=2", FLAG]
    assert disabled.split() == ["--xla_cpu_enable_fast_math=false", "--xla_force_host_platform_device_count=2"]


def test_an_explicit_user_setting_is_not_clobbered():
    proc = run_python("""
        import os, warnings, jconv
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            jconv.use_deterministic_algorithms(True)
        print(os.environ["XLA_FLAGS"])
        print(caught[0].message)
    """, XLA_FLAGS="--xla_gpu_deterministic_ops=false")
    assert proc.returncode == 0, proc.stderr
    flags, message = proc.stdout.strip().split("\n")
    assert flags == "--xla_gpu_deterministic_ops=false"
    assert "sets --xla_gpu_deterministic_ops=false explicitly" in message


def test_disabling_before_backend_start_removes_only_jconvs_flags():
    out = ok("""
        import os, jconv
        jconv.use_deterministic_algorithms(True)
        jconv.use_deterministic_algorithms(False)
        print(repr(os.environ.get("XLA_FLAGS")), jconv.are_deterministic_algorithms_enabled())
    """)
    assert out.strip() == "None False"


def test_env_var_enables_at_import():
    out = ok(REACHED_XLA + textwrap.dedent("""
        import os, jax.numpy as jnp, jconv
        print(os.environ["XLA_FLAGS"], jconv.are_deterministic_algorithms_enabled())
        print(option_reached_xla(lambda x: x * 2, jnp.ones(2)))
    """), JCONV_DETERMINISTIC="1")
    assert out.strip().split("\n") == [f"{FLAG} True", "True"]


def test_env_var_with_nonsense_warns_and_is_ignored():
    proc = run_python("import jconv; print(jconv.are_deterministic_algorithms_enabled())", JCONV_DETERMINISTIC="maybe")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    assert "JCONV_DETERMINISTIC='maybe' is ignored" in proc.stderr


def test_env_var_after_jax_started_warns_instead_of_making_jconv_unimportable():
    """Importing jconv after JAX has run cannot set XLA's flag any more: a warning, and the package still imports
    (so the mode can be turned off again), with jconv's own dispatch restricted as asked."""
    proc = run_python("""
        import jax.numpy as jnp
        jnp.ones(2).block_until_ready()
        import jconv
        print(jconv.are_deterministic_algorithms_enabled(), jconv.is_deterministic_algorithms_warn_only_enabled())
        jconv.use_deterministic_algorithms(False, warn_only=True)
        print(jconv.are_deterministic_algorithms_enabled())
    """, JCONV_DETERMINISTIC="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False", "False"]
    assert "cannot enable XLA's determinism flag" in proc.stderr


def test_late_call_raises_and_warn_only_warns():
    out = ok("""
        import warnings, jax.numpy as jnp, jconv
        jnp.ones(1).block_until_ready()  # the backend has started
        try:
            jconv.use_deterministic_algorithms(True)
        except RuntimeError as e:
            print("raised:", "after JAX's backend started" in str(e), "JCONV_DETERMINISTIC=1" in str(e))
        print(jconv.are_deterministic_algorithms_enabled())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            jconv.use_deterministic_algorithms(True, warn_only=True)
        print("warned:", len(caught), caught[0].category.__name__, jconv.are_deterministic_algorithms_enabled())
    """)
    assert out.strip().split("\n") == ["raised: True True", "False", "warned: 1 RuntimeWarning True"]


def test_late_call_is_fine_when_the_flag_was_already_set():
    out = ok("""
        import jax.numpy as jnp, jconv
        jnp.ones(1).block_until_ready()
        jconv.use_deterministic_algorithms(True)
        print(jconv.are_deterministic_algorithms_enabled())
    """, XLA_FLAGS=FLAG)
    assert out.strip() == "True"


def test_mode_argument_types():
    with pytest.raises(TypeError, match="mode must be a bool"):
        jconv.use_deterministic_algorithms(1)
    with pytest.raises(TypeError, match="warn_only must be a bool"):
        jconv.use_deterministic_algorithms(False, warn_only="yes")


def test_deterministic_jit_passes_the_option_to_the_compiler(tmp_path):
    """The scoped form works after the backend started, without touching XLA_FLAGS."""
    import glob

    x, w = jnp.ones((1, 2, 6, 6)), jnp.ones((3, 2, 3, 3))
    f = jconv.deterministic_jit(lambda x, w: jconv.conv2d(x, w, padding=1),
                                compiler_options={"xla_dump_to": str(tmp_path)})
    np.testing.assert_array_equal(f(x, w), jconv.conv2d(x, w, padding=1))
    text = "".join(open(p).read() for p in glob.glob(str(tmp_path / "*debug_options")))
    assert "xla_gpu_deterministic_ops: true" in text
    assert "--xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", "")


class _NonDeterministicXla:
    """The xla lowering, declared non-deterministic: stands in for e.g. an atomics-based kernel."""

    NAME = "xla"
    DETERMINISTIC = False
    refusal = staticmethod(dispatch.LOWERINGS["xla"].refusal)
    lower = staticmethod(dispatch.LOWERINGS["xla"].lower)
    variants = staticmethod(dispatch.LOWERINGS["xla"].variants)


def test_dispatch_refuses_non_deterministic_lowerings_in_the_mode(monkeypatch):
    monkeypatch.setitem(dispatch.LOWERINGS, "xla", _NonDeterministicXla)
    spec = jconv.conv2d.build_spec(jnp.ones((1, 2, 5, 5)), jnp.ones((2, 2, 3, 3)), lowering="xla")
    assert dispatch.select(spec, deterministic=False).lowering == "xla"
    with pytest.raises(RuntimeError, match="lowering='xla' is not deterministic"):
        dispatch.select(spec, deterministic=True)
    monkeypatch.setitem(determinism._state, "warn_only", True)
    with pytest.warns(RuntimeWarning, match="is not deterministic"):
        dispatch.select(spec, deterministic=True)


def test_deterministic_jit_makes_dispatch_deterministic_while_tracing():
    seen = []

    def f(x):
        seen.append(jconv.are_deterministic_algorithms_enabled())
        return x * 2

    jconv.deterministic_jit(f)(jnp.ones(2))
    assert seen == [True] and not jconv.are_deterministic_algorithms_enabled()


BITWISE = """
import hashlib, sys
import jax, jax.numpy as jnp, numpy as np, jconv
cases = [
    (jconv.conv2d, (4, 8, 17, 15), (8, 1, 5, 5), dict(groups=8, padding=2, stride=(1, 2))),
    (jconv.conv2d, (2, 6, 12, 12), (9, 2, 3, 3), dict(groups=3, dilation=2, padding="same")),
    (jconv.conv1d, (2, 16, 257), (16, 1, 4), dict(groups=16, padding=3)),
    (jconv.conv1d, (2, 8, 100), (12, 8, 3), dict(dilation=4, padding=4)),
    (jconv.conv2d, (2, 6, 12, 12), (4, 6, 1, 1), dict(stride=2)),
    (jconv.conv3d, (2, 4, 7, 8, 6), (6, 2, 3, 3, 2), dict(groups=2, padding=1, stride=(2, 1, 1))),
    (jconv.conv_transpose2d, (2, 6, 9, 8), (6, 4, 4, 4), dict(stride=2, padding=1)),
    (jconv.conv2d, (2, 12, 11, 6), (4, 6, 3, 3), dict(padding=(1, 2), channels_last=True)),
]
for lowering in sys.argv[1:]:
    rng = np.random.default_rng(0)
    digest = hashlib.sha256()
    ran = 0
    for fn, xs, ws, kw in cases:
        x, w = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in (xs, ws))
        spec = fn.build_spec(x, w, None, lowering=lowering, **kw)
        b = jnp.asarray(rng.standard_normal(spec.out_channels), jnp.float32)
        if jconv.dispatch.LOWERINGS[lowering].refusal(spec) is not None:
            continue
        loss = jax.jit(jax.value_and_grad(lambda x, w, b: (fn(x, w, b, lowering=lowering, **kw) ** 2).sum(),
                                          argnums=(0, 1, 2)))
        runs = [jax.tree_util.tree_leaves(loss(x, w, b)) for _ in range(3)]
        for other in runs[1:]:
            assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(runs[0], other)), lowering
        for leaf in runs[0]:
            digest.update(np.asarray(leaf).tobytes())
        ran += 1
    print(lowering, ran, digest.hexdigest())
"""


@pytest.fixture(scope="session")
def bitwise_digests():
    """Per lowering, (cases run, digest of the results) from each of two processes, all lowerings in each (one
    process per lowering and run spent most of its time starting up)."""
    digests = {}
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", BITWISE, *jconv.LOWERING_NAMES], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "JCONV_DETERMINISTIC": "1", "JAX_PLATFORMS": "cpu"})
        assert proc.returncode == 0, proc.stderr
        for line in proc.stdout.splitlines():
            lowering, ran, digest = line.split()
            digests.setdefault(lowering, []).append((int(ran), digest))
    return digests


@pytest.mark.parametrize("lowering", jconv.LOWERING_NAMES)
def test_bitwise_identical_across_runs_and_processes(bitwise_digests, lowering):
    (ran, first), (_, second) = bitwise_digests[lowering]
    assert ran >= 1, f"no case exercises the {lowering} lowering"
    assert first == second
