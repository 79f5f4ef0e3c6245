"""Port whole torchvision-style models, ResNet-18 and MobileNetV2, to Flax NNX with jconv layers.

    pip install -e ".[examples]" "torch==2.13.0" && python examples/port_resnet.py

Each model is written twice with torchvision's attribute names: with torch.nn (torchvision itself needs a CUDA
build of torch, so its two architectures are written out here) and as an NNX module with jconv's convs. One
`jconv.nn.load_state_dict(model, torch_model.state_dict())` moves every weight and batch statistic across; a
torchvision checkpoint's keys would load the same way. The script checks the eval-mode outputs against torch's,
runs one jitted training step, and times the forward pass of both.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

import jconv

# --- torch: torchvision's ResNet-18 and MobileNetV2, with its attribute names ------------------------------------


class TorchBasicBlock(torch.nn.Module):
    def __init__(self, inplanes, planes, stride=1):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(planes)
        self.relu = torch.nn.ReLU(inplace=True)
        self.conv2 = torch.nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = torch.nn.Sequential(torch.nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                                  torch.nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet18(torch.nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(64)
        self.relu = torch.nn.ReLU(inplace=True)
        self.maxpool = torch.nn.MaxPool2d(3, 2, 1)
        widths = (64, 128, 256, 512)
        for i, (inplanes, planes) in enumerate(zip((64,) + widths[:-1], widths)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", torch.nn.Sequential(TorchBasicBlock(inplanes, planes, stride),
                                                               TorchBasicBlock(planes, planes)))
        self.avgpool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def torch_conv_bn_act(inp, oup, kernel=3, stride=1, groups=1):
    """torchvision's Conv2dNormActivation: a Sequential (conv, bn, ReLU6)."""
    return torch.nn.Sequential(torch.nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups,
                                               bias=False), torch.nn.BatchNorm2d(oup), torch.nn.ReLU6(inplace=True))


class TorchInvertedResidual(torch.nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers = [torch_conv_bn_act(inp, hidden, kernel=1)] if expand_ratio != 1 else []
        layers += [torch_conv_bn_act(hidden, hidden, stride=stride, groups=hidden),
                   torch.nn.Conv2d(hidden, oup, 1, bias=False), torch.nn.BatchNorm2d(oup)]
        self.conv = torch.nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expansion t, channels c, repeats n, first stride s): torchvision's inverted_residual_setting at width 1.0.
MOBILENET_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                        (6, 320, 1, 1))


def mobilenet_v2_blocks():
    """(inp, oup, stride, expand_ratio) of each inverted residual block, in order."""
    blocks, inp = [], 32
    for t, c, n, s in MOBILENET_V2_SETTING:
        for i in range(n):
            blocks.append((inp, c, s if i == 0 else 1, t))
            inp = c
    return blocks


class TorchMobileNetV2(torch.nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        features = [torch_conv_bn_act(3, 32, stride=2)]
        features += [TorchInvertedResidual(*block) for block in mobilenet_v2_blocks()]
        features.append(torch_conv_bn_act(320, 1280, kernel=1))
        self.features = torch.nn.Sequential(*features)
        self.classifier = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(1280, num_classes))

    def forward(self, x):
        x = torch.nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


# --- NNX with jconv: the same names, so the state_dict's keys match one for one -----------------------------------


def batch_norm(features, rngs):
    """torch's BatchNorm2d: channels on axis 1; torch's momentum 0.1 is Flax's 0.9; epsilon 1e-5
    (docs/porting.md)."""
    return nnx.BatchNorm(features, axis=1, momentum=0.9, epsilon=1e-5, rngs=rngs)


def max_pool_3x3_s2(x):
    """torch.nn.MaxPool2d(3, 2, 1) on NCHW (padding never wins a max)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2),
                                 ((0, 0), (0, 0), (1, 1), (1, 1)))


class BasicBlock(nnx.Module):
    def __init__(self, inplanes, planes, stride=1, *, rngs):
        self.conv1 = jconv.nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False, rngs=rngs)
        self.bn1 = batch_norm(planes, rngs)
        self.conv2 = jconv.nn.Conv2d(planes, planes, 3, 1, 1, bias=False, rngs=rngs)
        self.bn2 = batch_norm(planes, rngs)
        self.downsample = nnx.data(None)  # a module or None: NNX is told it holds data either way
        if stride != 1 or inplanes != planes:
            self.downsample = nnx.Sequential(jconv.nn.Conv2d(inplanes, planes, 1, stride, bias=False, rngs=rngs),
                                             batch_norm(planes, rngs))

    def __call__(self, x):
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return jax.nn.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nnx.Module):
    def __init__(self, num_classes=1000, *, rngs):
        self.conv1 = jconv.nn.Conv2d(3, 64, 7, 2, 3, bias=False, rngs=rngs)
        self.bn1 = batch_norm(64, rngs)
        widths = (64, 128, 256, 512)
        for i, (inplanes, planes) in enumerate(zip((64,) + widths[:-1], widths)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nnx.Sequential(BasicBlock(inplanes, planes, stride, rngs=rngs),
                                                          BasicBlock(planes, planes, rngs=rngs)))
        self.fc = nnx.Linear(512, num_classes, rngs=rngs)

    def __call__(self, x):
        x = max_pool_3x3_s2(jax.nn.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.mean((2, 3)))


def conv_bn_act(inp, oup, kernel=3, stride=1, groups=1, *, rngs):
    return nnx.Sequential(jconv.nn.Conv2d(inp, oup, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False,
                                          rngs=rngs), batch_norm(oup, rngs), jax.nn.relu6)


class InvertedResidual(nnx.Module):
    def __init__(self, inp, oup, stride, expand_ratio, *, rngs):
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        layers = [conv_bn_act(inp, hidden, kernel=1, rngs=rngs)] if expand_ratio != 1 else []
        layers += [conv_bn_act(hidden, hidden, stride=stride, groups=hidden, rngs=rngs),
                   jconv.nn.Conv2d(hidden, oup, 1, bias=False, rngs=rngs), batch_norm(oup, rngs)]
        self.conv = nnx.Sequential(*layers)

    def __call__(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nnx.Module):
    def __init__(self, num_classes=1000, *, rngs):
        features = [conv_bn_act(3, 32, stride=2, rngs=rngs)]
        features += [InvertedResidual(*block, rngs=rngs) for block in mobilenet_v2_blocks()]
        features.append(conv_bn_act(320, 1280, kernel=1, rngs=rngs))
        self.features = nnx.Sequential(*features)
        self.classifier = nnx.Sequential(nnx.Dropout(0.2, rngs=rngs), nnx.Linear(1280, num_classes, rngs=rngs))

    def __call__(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


# --- the port ------------------------------------------------------------------------------------------------------


def calibrated(torch_model, batch, size, seed):
    """A randomly initialised torch model whose BatchNorm statistics come from a few training-mode batches, as a
    trained checkpoint's would, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    torch_model.train()
    with torch.no_grad():
        for _ in range(3):
            torch_model(torch.randn(batch, 3, size, size, generator=generator))
    return torch_model.eval()


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def train_step(model, optimizer, x, labels):
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def port(name, torch_cls, nnx_cls, args):
    torch.manual_seed(args.seed)
    torch_model = calibrated(torch_cls(args.classes), args.batch, args.size, args.seed)
    model = nnx_cls(args.classes, rngs=nnx.Rngs(args.seed))
    result = jconv.nn.load_state_dict(model, torch_model.state_dict())  # strict: every key matched
    model.eval()  # BatchNorm uses the loaded running statistics, Dropout is off: torch's eval()

    x = np.random.default_rng(args.seed).standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
    forward = nnx.jit(lambda model, x: model(x))
    got = np.asarray(forward(model, jnp.asarray(x)))
    rel = float(np.abs(got - expected).max() / np.abs(expected).max())
    print(f"{name}: {len(torch_model.state_dict())} torch keys loaded ({result}); eval outputs "
          f"{got.shape}, max relative error {rel:.2e}")

    jax_s = median_seconds(lambda: forward(model, jnp.asarray(x)).block_until_ready(), args.repeats)
    with torch.no_grad():
        torch_s = median_seconds(lambda: torch_model(torch.from_numpy(x)), args.repeats)
    print(f"{name}: forward per batch of {args.batch}x3x{args.size}x{args.size}: jconv {jax_s * 1e3:.1f} ms, "
          f"torch {torch_s * 1e3:.1f} ms (median of {args.repeats})")

    model.train()
    optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=nnx.Param)
    labels = jnp.asarray(np.arange(args.batch) % args.classes)
    step = nnx.jit(train_step)
    losses = [float(step(model, optimizer, jnp.asarray(x), labels)) for _ in range(2)]
    print(f"{name}: jitted training step, loss {losses[0]:.4f} -> {losses[1]:.4f}")
    return rel


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224, help="image height and width")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per model")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    worst = max(port("ResNet-18", TorchResNet18, ResNet18, args),
                port("MobileNetV2", TorchMobileNetV2, MobileNetV2, args))
    print(f"largest relative error: {worst:.2e} ({'within' if worst <= 1e-4 else 'OVER'} 1e-4)")


if __name__ == "__main__":
    main()
