"""jconv inside unmodified Flax layers: the same nnx.Conv model trained with lax's convolution and with jconv's.

    pip install -e ".[examples]" && python examples/flax_drop_in.py

The model is plain Flax (nnx.Conv, channels-last, HWIO kernels) with depthwise, pointwise and grouped layers; the
only change is one argument, `conv_general_dilated=jconv.conv_general_dilated`. Both copies start from the same
parameters and see the same batches, so their losses agree to rounding. It prints both loss curves, their largest
difference, the held-out accuracy and the time per training step of each.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jconv


class FlaxCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, conv_general_dilated=jax.lax.conv_general_dilated):
        conv = lambda i, o, k, **kw: nnx.Conv(i, o, k, padding="SAME", rngs=rngs,
                                              conv_general_dilated=conv_general_dilated, **kw)
        self.stem = conv(1, 32, (3, 3))                                    # dense 3x3
        self.depthwise = conv(32, 32, (3, 3), feature_group_count=32)      # depthwise 3x3
        self.pointwise = conv(32, 64, (1, 1))                              # 1x1
        self.grouped = conv(64, 64, (3, 3), feature_group_count=8)         # grouped 3x3
        self.head = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x):  # x: (N, 8, 8, 1), Flax's channels-last layout
        x = jax.nn.gelu(self.stem(x))
        x = jax.nn.gelu(self.pointwise(self.depthwise(x)))
        x = jax.nn.gelu(self.grouped(x))
        return self.head(x.mean(axis=(1, 2)))


def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def accuracy(model, x, y):
    return (model(x).argmax(-1) == y).mean()


def train(conv_general_dilated, data, epochs: int, batch: int, seed: int):
    x_train, y_train, x_test, y_test = data
    model = FlaxCNN(nnx.Rngs(seed), conv_general_dilated)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    order = np.random.default_rng(seed)
    losses, step_seconds = [], []
    for _ in range(epochs):
        perm = order.permutation(len(x_train))
        for start in range(0, len(perm) - batch + 1, batch):
            idx = perm[start:start + batch]
            t0 = time.perf_counter()
            losses.append(float(train_step(model, optimizer, x_train[idx], y_train[idx])))
            step_seconds.append(time.perf_counter() - t0)
    # The first step compiles; the median of the rest is the steady-state step time.
    return np.array(losses), float(accuracy(model, x_test, y_test)), float(np.median(step_seconds[1:]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.2, random_state=0)
    data = tuple(jnp.asarray(a) for a in (x_train, y_train, x_test, y_test))
    runs = {name: train(conv, data, args.epochs, args.batch, args.seed)
            for name, conv in (("lax", jax.lax.conv_general_dilated), ("jconv", jconv.conv_general_dilated))}
    for name, (losses, acc, step) in runs.items():
        every = max(1, len(losses) // 6)
        curve = " ".join(f"{v:.4f}" for v in losses[::every])
        print(f"{name:5s}: loss {curve} | test accuracy: {100 * acc:.1f}% | {1e3 * step:.2f} ms per step")
    difference = np.max(np.abs(runs["jconv"][0] - runs["lax"][0]) / np.maximum(np.abs(runs["lax"][0]), 1e-6))
    print(f"largest relative loss difference: {difference:.2e}")


if __name__ == "__main__":
    main()
