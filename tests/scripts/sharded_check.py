"""Run every jconv lowering on inputs sharded over 8 forced CPU devices; print one JSON line per case.

Used by tests/test_sharding.py (XLA reads the device count at backend start, so this runs in its own process).
"""

import json
import math
import os
import re
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import jconv  # noqa: E402

# One configuration per lowering that it accepts: (fn, input (N, C, H, W...), weight, kwargs).
CASES = {
    "xla": (jconv.conv2d, (8, 4, 32, 16), (6, 4, 3, 3), dict(padding=1)),
    "taps": (jconv.conv2d, (8, 4, 32, 16), (8, 1, 3, 3), dict(padding=1, groups=4)),
    "grouped": (jconv.conv2d, (8, 4, 32, 16), (6, 2, 3, 3), dict(padding=1, groups=2)),
    "matmul": (jconv.conv2d, (8, 4, 32, 16), (6, 4, 1, 1), {}),
    "dilated": (jconv.conv2d, (8, 4, 32, 16), (6, 4, 3, 3), dict(padding=2, dilation=2)),
    "phase": (jconv.conv_transpose2d, (8, 4, 16, 8), (4, 3, 4, 4), dict(stride=2, padding=1)),
    "planes": (jconv.conv3d, (8, 4, 16, 8, 6), (6, 4, 3, 3, 3), dict(padding=1)),
    "im2col": (jconv.conv2d, (8, 32, 16, 4), (6, 4, 3, 3), dict(padding=1, channels_last=True)),
    "pallas": (jconv.conv2d, (8, 4, 32, 16), (4, 1, 3, 3), dict(padding=1, groups=4)),
}


def main(lowerings):
    from jax.sharding import AxisType

    for mode in ("auto", "explicit"):
        axis_type = AxisType.Auto if mode == "auto" else AxisType.Explicit
        run(jax.make_mesh((8,), ("d",), axis_types=(axis_type,)), mode, lowerings)


def run(mesh, mode, lowerings):
    rng = np.random.default_rng(0)
    for family in lowerings:
        fn, xs, ws, kw = CASES[family]
        x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
        w = jnp.asarray(rng.standard_normal(ws), jnp.float32)
        # Auto meshes: force the family's lowering. Explicit meshes: auto (must always work), then the forced one.
        for lowering in ([family] if mode == "auto" else ["auto", family]):
            f = lambda x, w, lowering=lowering: fn(x, w, lowering=lowering, **kw)
            loss = lambda x, w, f=f: (f(x, w) ** 2).sum()
            ref_f = lambda x, w: fn(x, w, lowering="xla", **kw)
            y_ref = jax.jit(ref_f)(x, w)
            g_ref = jax.jit(jax.grad(lambda x, w: (ref_f(x, w) ** 2).sum(), argnums=(0, 1)))(x, w)
            axes = [("batch", P("d")), ("spatial", P(None, None, "d"))]
            if x.ndim == 5:  # 3-D: also the second spatial axis (depth and H are treated differently by planes)
                axes.append(("spatial_inner", P(None, None, None, "d")))
            for axis_name, spec in axes:
                xs_ = jax.device_put(x, NamedSharding(mesh, spec))
                ws_ = jax.device_put(w, NamedSharding(mesh, P()))
                row = dict(family=family, lowering=lowering, axis=axis_name, mode=mode)
                jf = jax.jit(f)
                try:
                    y = jf(xs_, ws_)
                except ValueError as e:  # a lowering refusing an explicitly sharded axis
                    print(json.dumps(dict(row, refused=str(e))), flush=True)
                    continue
                gx, gw = jax.jit(jax.grad(loss, argnums=(0, 1)))(xs_, ws_)
                hlo = jf.lower(xs_, ws_).compile().as_text()
                gathers = [line for line in hlo.splitlines() if "all-gather(" in line]
                # Any array with as many elements as the whole input, in whatever layout or reshaping.
                gathered_sizes = [math.prod(map(int, re.findall(r"\d+", m.group(1))))
                                  for m in (re.search(r"= f32\[([\d,]*)\]", line) for line in gathers) if m]
                full_input_gathered = math.prod(xs) in gathered_sizes
                scale = float(jnp.max(jnp.abs(y_ref)))
                grad_scale = max(float(jnp.max(jnp.abs(g))) for g in g_ref)
                print(json.dumps(dict(
                    row, refused=None,
                    rel_err=float(jnp.max(jnp.abs(y - y_ref))) / scale,
                    grad_rel_err=max(float(jnp.max(jnp.abs(a - b))) for a, b in zip((gx, gw), g_ref)) / grad_scale,
                    output_sharded=y.sharding.is_equivalent_to(NamedSharding(mesh, spec), y.ndim),
                    devices=len(y.sharding.device_set), all_gathers=len(gathers),
                    full_input_gathered=full_input_gathered,
                )), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or list(CASES))
