"""Port a PyTorch CNN's weights into jconv modules and check that the two agree.

    pip install -e ".[examples]" "torch==2.13.0" && python examples/port_from_torch.py
"""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

import jconv.nn as jnn

jax.config.update("jax_enable_x64", True)  # compare in float64, as the tests do


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, stride=2, padding=1, padding_mode="reflect")
        self.dw = torch.nn.Conv2d(16, 32, 5, padding="same", groups=16)       # depthwise, multiplier 2
        self.up = torch.nn.ConvTranspose2d(32, 8, 4, stride=2, padding=1)

    def forward(self, x):
        return self.up(torch.relu(self.dw(torch.relu(self.conv1(x)))))


class JconvNet(nnx.Module):
    """The same network; the layers are built from the torch modules and hold their weights."""

    def __init__(self, net: TorchNet):
        # from_torch reads the hyper-parameters and calls load_state_dict with the torch parameters.
        self.conv1 = jnn.from_torch(net.conv1, param_dtype=jnp.float64)
        self.dw = jnn.from_torch(net.dw, param_dtype=jnp.float64)
        # Or build it by hand and load a state_dict, exactly as with torch:
        self.up = jnn.ConvTranspose2d(32, 8, 4, stride=2, padding=1, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        self.up.load_state_dict(net.up.state_dict())

    def __call__(self, x):
        return self.up(jax.nn.relu(self.dw(jax.nn.relu(self.conv1(x)))))


def main():
    torch.manual_seed(0)
    net = TorchNet().double().eval()
    ported = JconvNet(net)
    print(ported.conv1, ported.dw, ported.up, sep="\n")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32))
    with torch.no_grad():
        expected = net(torch.tensor(x)).numpy()
    got = np.asarray(nnx.jit(lambda m, x: m(x))(ported, jnp.asarray(x)))
    print(f"output shape {got.shape}; max |jconv - torch| = {np.abs(got - expected).max():.3e}")
    assert got.shape == expected.shape and np.allclose(got, expected, rtol=1e-10, atol=1e-10)


if __name__ == "__main__":
    main()
