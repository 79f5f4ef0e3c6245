"""Minimal reproducer of an XLA:CPU crash, with plain lax and no jconv: the gradient of a 3-D
lax.conv_general_dilated with both lhs_dilation (a transposed conv's zero-stuffing) and rhs_dilation aborts the
process while compiling (algebraic_simplifier.cc: "Check failed: ... Window dimensions do not match RHS shape").
jaxlib 0.10.2 on CPU; found by the hypothesis parity test of `lowering="xla"` on a transposed 3-D conv
(jconv's `auto` picks `phase` there, which does not build this convolution). Each gradient runs in its own
process; prints {"gradient w.r.t. input": "ok" | "aborted (exit code ...)", ...} as one JSON line.

    python tests/scripts/xla_dilated_conv_grad_abort.py
"""

import json
import subprocess
import sys

PROGRAM = """
import jax, jax.numpy as jnp
from jax import lax
x, w = jnp.ones((2, 1, 3, 2, 3)), jnp.ones((3, 1, 3, 3, 2))
loss = lambda x, w: lax.conv_general_dilated(x, w, (1, 1, 1), [(2, 1), (1, 0), (0, 0)], lhs_dilation=(2, 3, 2),
                                             rhs_dilation=(3, 2, 1)).sum()
jax.block_until_ready(jax.grad(loss, argnums={argnum})(x, w))
"""

results = {}
for name, argnum in (("gradient w.r.t. input", 0), ("gradient w.r.t. weight", 1)):
    run = subprocess.run([sys.executable, "-c", PROGRAM.format(argnum=argnum)], capture_output=True, text=True)
    results[name] = "ok" if run.returncode == 0 else f"aborted (exit code {run.returncode})"
print(json.dumps(results))
