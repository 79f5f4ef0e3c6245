"""Minimal reproducers of an XLA:CPU crash, with plain lax and no jconv: the gradient of some
lax.conv_general_dilated calls with lhs_dilation (a transposed conv's zero-stuffing) aborts the process while
compiling (algebraic_simplifier.cc: "Check failed: ... Window dimensions do not match RHS shape").
jaxlib 0.10.2 on CPU. Two calls: a 3-D one that also has rhs_dilation, found by the hypothesis parity test of
`lowering="xla"` on a transposed 3-D conv, and a 2-D one without, found by tests/scripts/fuzz_parity.py: the
weight gradient of the conv that `lowering="xla"` builds for conv_transpose2d of a 2x4x3x3 input with a 4x4
kernel, stride (1, 2), padding (0, 3). jconv's `auto` picks `phase` for transposed convs on CPU, which builds
neither. Each gradient runs in its own process; prints {"3-D, gradient w.r.t. input": "ok" | "aborted (exit code
...)", ...} as one JSON line.

    python tests/scripts/xla_dilated_conv_grad_abort.py
"""

import json
import subprocess
import sys

CALLS = {
    "3-D": ("jnp.ones((2, 1, 3, 2, 3)), jnp.ones((3, 1, 3, 3, 2))",
            "(1, 1, 1), [(2, 1), (1, 0), (0, 0)], lhs_dilation=(2, 3, 2), rhs_dilation=(3, 2, 1)"),
    "2-D": ("jnp.ones((2, 4, 3, 3)), jnp.ones((4, 4, 4, 4))", "(1, 1), [(3, 3), (0, 0)], lhs_dilation=(1, 2)"),
}

PROGRAM = """
import jax, jax.numpy as jnp
from jax import lax
x, w = {arrays}
loss = lambda x, w: lax.conv_general_dilated(x, w, {arguments}).sum()
jax.block_until_ready(jax.grad(loss, argnums={argnum})(x, w))
"""

results = {}
for call, (arrays, arguments) in CALLS.items():
    for name, argnum in (("gradient w.r.t. input", 0), ("gradient w.r.t. weight", 1)):
        program = PROGRAM.format(arrays=arrays, arguments=arguments, argnum=argnum)
        run = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
        results[f"{call}, {name}"] = "ok" if run.returncode == 0 else f"aborted (exit code {run.returncode})"
print(json.dumps(results))
