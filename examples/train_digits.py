"""Train a small CNN built from jconv.nn modules on scikit-learn's bundled digits (no download), with nnx.jit.

    pip install -e ".[examples]" && python examples/train_digits.py

The network uses a dense, a depthwise (groups = channels) and a dilated convolution, PyTorch-style modules
throughout. It prints progress, the held-out accuracy at the end, and saves a loss/accuracy plot next to this file.

Data-parallel over all local devices (each batch sharded along its first axis, parameters replicated; jit
inserts the gradient all-reduce). On a CPU, make 8 devices first:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/train_digits.py --data-parallel

With --autotune, each convolution's lowering is measured on this machine when the training step is first traced
(or read from the cache of an earlier run: docs/autotune.md); the first step's time shows what that costs.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import jconv
import jconv.nn as jnn


class DigitsCNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.stem = jnn.Conv2d(1, 32, 3, padding=1, rngs=rngs)                     # dense 3x3
        self.depthwise = jnn.Conv2d(32, 32, 3, padding=1, groups=32, rngs=rngs)    # depthwise 3x3
        self.pointwise = jnn.Conv2d(32, 64, 1, rngs=rngs)                          # 1x1
        self.dilated = jnn.Conv2d(64, 64, 3, padding=2, dilation=2, rngs=rngs)     # dilated 3x3
        self.head = nnx.Linear(64, 10, rngs=rngs)

    def __call__(self, x):  # x: (N, 1, 8, 8)
        x = jax.nn.gelu(self.stem(x))
        x = jax.nn.gelu(self.pointwise(self.depthwise(x)))
        x = jax.nn.gelu(self.dilated(x))
        return self.head(x.mean(axis=(2, 3)))


def loss_fn(model, x, y):
    logits = model(x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


@nnx.jit
def train_step(model, optimizer, x, y):
    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
    optimizer.update(model, grads)
    return loss, (logits.argmax(-1) == y).mean()


@nnx.jit
def evaluate(model, x, y):
    loss, logits = loss_fn(model, x, y)
    return loss, (logits.argmax(-1) == y).mean()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-parallel", action="store_true",
                        help="shard every batch over all local devices (Mesh + NamedSharding)")
    parser.add_argument("--autotune", action="store_true", help="measured dispatch (jconv.autotune)")
    parser.add_argument("--plot", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_digits.png"))
    args = parser.parse_args()

    if args.autotune:
        jconv.autotune(True)
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8), NCHW as in PyTorch
    x_train, x_test, y_train, y_test = train_test_split(images, digits.target, test_size=0.2,
                                                        random_state=args.seed, stratify=digits.target)
    print(f"digits: {len(x_train)} training and {len(x_test)} held-out images, 8x8, 10 classes")

    model = DigitsCNN(nnx.Rngs(args.seed))
    schedule = optax.cosine_decay_schedule(args.lr, args.epochs * (len(x_train) // args.batch_size))
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=1e-4), wrt=nnx.Param)
    put = jnp.asarray
    if args.data_parallel:
        devices = jax.device_count()
        if args.batch_size % devices or len(x_test) % devices:
            raise ValueError(f"--data-parallel: batch size {args.batch_size} and {len(x_test)} held-out images "
                             f"must divide evenly over {devices} devices")
        mesh = jax.make_mesh((devices,), ("data",))
        state = jax.device_put(nnx.state((model, optimizer)), NamedSharding(mesh, P()))  # replicated
        nnx.update((model, optimizer), state)
        put = lambda a: jax.device_put(a, NamedSharding(mesh, P("data")))
        print(f"data-parallel over {devices} devices: {args.batch_size // devices} images per device per step")
    rng = np.random.default_rng(args.seed)
    history = {"train_loss": [], "test_loss": [], "test_acc": []}
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        losses = []
        for i in range(0, len(order) - args.batch_size + 1, args.batch_size):  # drop the ragged last batch
            idx = order[i:i + args.batch_size]
            loss, _ = train_step(model, optimizer, put(x_train[idx]), put(y_train[idx]))
            losses.append(float(loss))
            if epoch == 1 and i == 0:
                print(f"first step (tracing{', autotune' if args.autotune else ''}, compiling, running): "
                      f"{time.perf_counter() - start:.1f} s", flush=True)
        test_loss, test_acc = evaluate(model, put(x_test), put(y_test))
        history["train_loss"].append(np.mean(losses))
        history["test_loss"].append(float(test_loss))
        history["test_acc"].append(float(test_acc))
        if epoch == 1 or epoch % 5 == 0 or epoch == args.epochs:
            print(f"epoch {epoch:3d}/{args.epochs}  train loss {np.mean(losses):.4f}  held-out loss "
                  f"{float(test_loss):.4f}  held-out accuracy {100 * float(test_acc):.1f}%  "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
    print(f"test accuracy: {100 * history['test_acc'][-1]:.1f}%")
    save_plot(history, args.plot)


def save_plot(history, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, history["train_loss"], label="train")
    ax_loss.plot(epochs, history["test_loss"], label="held-out")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, 100 * np.asarray(history["test_acc"]))
    ax_acc.set(xlabel="epoch", ylabel="%", title="held-out accuracy", ylim=(80, 100))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
