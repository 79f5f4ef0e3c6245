"""Minimal reproducer of an XLA SPMD bug, with plain lax and no jconv: under jit, on 8 forced CPU devices, the
weight gradient of a strided lax.conv_general_dilated is wrong when the input is sharded over a spatial axis and
the output's shards are uneven. Prints {"H=..,stride=..": relative error} as one JSON line.

    python tests/scripts/gspmd_strided_conv_grad.py
"""

import json
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P  # noqa: E402

mesh = jax.make_mesh((8,), ("d",), axis_types=(AxisType.Auto,))
rng = np.random.default_rng(0)
errors = {}
for height, stride in ((8, 2), (16, 3)):
    x = jnp.asarray(rng.standard_normal((2, 4, height, 6)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((6, 4, 3, 3)), jnp.float32)

    def loss(x, w, stride=stride):
        return (lax.conv_general_dilated(x, w, (stride, 1), [(1, 1), (1, 1)]) ** 2).sum()

    expected = jax.grad(loss, argnums=1)(x, w)
    got = jax.jit(jax.grad(loss, argnums=1))(jax.device_put(x, NamedSharding(mesh, P(None, None, "d"))), w)
    errors[f"H={height},stride={stride}"] = float(jnp.max(jnp.abs(got - expected)) / jnp.max(jnp.abs(expected)))
print(json.dumps(errors))
