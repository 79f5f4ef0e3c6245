"""Turning what users pass (NumPy, JAX, torch tensors, sequences) into arrays: one path for every entry point."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_torch_tensor(value: Any) -> bool:
    """Whether `value` is a torch.Tensor, without importing torch."""
    return any(cls.__module__.startswith("torch") and cls.__name__ == "Tensor" for cls in type(value).__mro__)


def to_numpy(value: Any) -> np.ndarray:
    """NumPy arrays, JAX arrays, torch tensors (detached, bfloat16 included), anything with __array__."""
    if is_torch_tensor(value):
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16 of torch's; widening to float32 is exact
            return np.asarray(jnp.asarray(value.float().numpy(), jnp.bfloat16))
        return value.numpy()
    if hasattr(value, "numpy") and not isinstance(value, (np.ndarray, jax.Array)):
        return np.asarray(value.numpy())
    return np.asarray(value)


def is_numeric(array: np.ndarray) -> bool:
    """Booleans, integers, floats (bfloat16 included, whose NumPy kind is 'V') and complex numbers."""
    return array.dtype.kind in "biufc" or jnp.issubdtype(array.dtype, jnp.inexact)


def as_jax(op: str, name: str, value: Any) -> jax.Array:
    """`value` as a JAX array for argument `name` of `op`, or a TypeError saying what to pass instead."""
    if isinstance(value, jax.Array) or hasattr(value, "aval"):
        return value
    if is_torch_tensor(value):
        if value.requires_grad:
            raise TypeError(
                f"{op}: {name} is a torch tensor that requires grad; jconv cannot send gradients back into torch's "
                f"graph. Pass {name}.detach() (JAX computes its own gradients: jax.grad)")
        return jnp.asarray(to_numpy(value))
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{op}: {name} must be an array, but got {type(value).__name__}: {e}") from e
    if not is_numeric(array):
        raise TypeError(f"{op}: {name} must be a numeric array, but got {type(value).__name__} of dtype "
                        f"{array.dtype}")
    return jnp.asarray(array)
