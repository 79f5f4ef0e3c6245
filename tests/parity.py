"""The shared parity harness: run a Case through jconv with a given lowering and compare with torch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jconv
from jconv import dispatch
from references import Case, torch_forward_and_grads


def jconv_fn(case: Case):
    name = f"conv_transpose{case.n}d" if case.transposed else f"conv{case.n}d"
    return getattr(jconv, name)


def to_layout(case: Case, a):
    """(N, C, *sp) -> the layout jconv is called with for this case."""
    if case.channels_last:
        a = jnp.moveaxis(a, 1, -1)
    return a[0] if case.unbatched else a


def from_layout(case: Case, a):
    if case.unbatched:
        a = a[None]
    return jnp.moveaxis(a, -1, 1) if case.channels_last else a


def build_spec(case: Case, lowering: str, x, w, b):
    return jconv_fn(case).build_spec(to_layout(case, x), w, b, lowering=lowering, **case.jconv_kwargs())


def accepted(case: Case, lowering: str, dtype=jnp.float64) -> bool:
    x, w, b = _as_jax(dtype, *case.arrays())
    spec = build_spec(case, lowering, x, w, b)
    if spec.lowering == "auto":
        return True
    module = dispatch.LOWERINGS[spec.lowering]
    return module.refusal(spec) is None and (spec.variant is None or spec.variant in module.variants(spec))


def _jconv_call(case: Case, lowering: str):
    """The case's jconv function on PyTorch-layout arrays (layout conversions included)."""
    fn = jconv_fn(case)
    kwargs = case.jconv_kwargs()

    def f(x, w, b):
        y = fn(to_layout(case, x), w, b, lowering=lowering, **kwargs)
        return from_layout(case, y)

    return f


def _as_jax(dtype, *arrays):
    return tuple(None if a is None else jnp.asarray(a, dtype) for a in arrays)


def jconv_forward(case: Case, lowering: str, x, w, b, dtype=jnp.float64):
    return np.asarray(_jconv_call(case, lowering)(*_as_jax(dtype, x, w, b)), np.float64)


def jconv_forward_and_grads(case: Case, lowering: str, x, w, b, cotangent, dtype=jnp.float64, jit=True):
    """Output and gradients (input, weight, bias) for `cotangent`, as float64 NumPy arrays.

    jit=True compiles them as one program (4x faster in the hypothesis tests than op-by-op); jit=False runs
    jax.vjp eagerly, so that the eager path's gradients are checked too (the grid does that for auto).
    """
    f = _jconv_call(case, lowering)

    def forward_and_grads(x, w, b, cotangent):
        if b is None:
            y, vjp = jax.vjp(lambda x, w: f(x, w, None), x, w)
            return (y, *vjp(cotangent.astype(y.dtype)), None)
        y, vjp = jax.vjp(f, x, w, b)
        return (y, *vjp(cotangent.astype(y.dtype)))

    y, gx, gw, gb = (jax.jit(forward_and_grads) if jit else forward_and_grads)(*_as_jax(dtype, x, w, b, cotangent))
    return tuple(None if a is None else np.asarray(a, np.complex128 if jnp.iscomplexobj(a) else np.float64)
                 for a in (y, gx, gw, gb))


def torch_and_jconv(case: Case, lowering: str, seed: int = 0, dtype=jnp.float64, jit=True):
    """Output and gradients (input, weight, bias) from torch in float64 and from jconv in `dtype`, for the case's
    arrays (`seed`) and a random cotangent: two 4-tuples of float64 NumPy arrays (complex128 for a complex `dtype`;
    None where there is no bias)."""
    is_complex = jnp.issubdtype(dtype, jnp.complexfloating)
    x, w, b = case.arrays(seed, complex_=is_complex)
    # Shape of the output from torch decides the cotangent.
    y_t, *_ = torch_forward_and_grads(case, x, w, b, np.zeros(1))
    rng = np.random.default_rng(seed + 1)
    cot = rng.standard_normal(y_t.shape) + (1j * rng.standard_normal(y_t.shape) if is_complex else 0)
    expected = torch_forward_and_grads(case, x, w, b, cot)
    if not is_complex:
        return expected, jconv_forward_and_grads(case, lowering, x, w, b, cot, dtype=dtype, jit=jit)
    # torch's loss is re(sum(y * conj(cot))). JAX's gradient of it is the VJP of conj(cot), and the conjugate
    # of torch's .grad (PyTorch reports the conjugate Wirtinger derivative: for |z|^2, torch 2z, jax.grad 2 conj(z)).
    y, *grads = jconv_forward_and_grads(case, lowering, x, w, b, np.conj(cot), dtype=dtype, jit=jit)
    return expected, (y, *(None if g is None else np.conj(g) for g in grads))


def assert_parity(case: Case, lowering: str, seed: int = 0, rtol=1e-9, atol=1e-9, jit=True, dtype=jnp.float64):
    expected, got = torch_and_jconv(case, lowering, seed, dtype=dtype, jit=jit)
    for name, e, g in zip(("output", "grad_input", "grad_weight", "grad_bias"), expected, got):
        if e is None:
            assert g is None
            continue
        assert g.shape == e.shape, f"{name}: shape {g.shape} != torch {e.shape} for {case}"
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=f"{name} mismatch for {case} ({lowering})")
