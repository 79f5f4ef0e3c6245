"""Train a small jconv.nn conv net twice on 8 forced CPU devices: once with every conv weight and bias sharded over
its output channels (kernel_metadata / bias_metadata, as nnx.Conv takes them, and then loaded from the unsharded
model's state_dict, which keeps the shardings), once unsharded. Prints one JSON line:
both loss curves and the shardings the parameters had. Used by tests/test_modules.py (the device count is fixed
when the backend starts, so this runs in its own process)."""

import json
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import jconv.nn as jn  # noqa: E402


class Net(nnx.Module):
    def __init__(self, sharded: bool, rngs: nnx.Rngs):
        out_channels = dict(kernel_metadata={"out_sharding": ("model", None, None, None)},
                            bias_metadata={"out_sharding": ("model",)}) if sharded else {}
        self.stem = jn.Conv2d(1, 16, 3, padding=1, rngs=rngs, **out_channels)
        self.depthwise = jn.Conv2d(16, 16, 3, padding=1, groups=16, rngs=rngs, **out_channels)
        self.pointwise = jn.Conv2d(16, 32, 1, rngs=rngs, **out_channels)
        self.head = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.stem(x))
        x = jax.nn.relu(self.pointwise(self.depthwise(x)))
        return self.head(x.mean(axis=(2, 3)))


def losses(sharded: bool, x, y, steps: int = 4):
    if sharded:  # other initial values, replaced by the plain model's through a whole-model state_dict
        model = Net(True, nnx.Rngs(0))
        jn.load_state_dict(model, jn.state_dict(Net(False, nnx.Rngs(1))))
    else:
        model = Net(False, nnx.Rngs(1))
    loaded = _shardings(model)
    optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss_fn = lambda model: optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    curve = [float(step(model, optimizer, x, y)) for _ in range(steps)]
    return curve, {"loaded": loaded, "trained": _shardings(model)}


def _shardings(model):
    return {name: str(getattr(model, name).weight[...].sharding.spec) for name in ("stem", "depthwise", "pointwise")}


def main():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((16, 1, 8, 8)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 16))
    # Auto (GSPMD) axes: with Explicit ones, lax's conv asks for an out_sharding that jconv does not yet pass.
    mesh = jax.make_mesh((8,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    with jax.set_mesh(mesh):
        sharded, shardings = losses(True, x, y)
        plain, _ = losses(False, x, y)
    print(json.dumps(dict(devices=jax.device_count(), sharded=sharded, plain=plain, shardings=shardings)))


if __name__ == "__main__":
    main()
