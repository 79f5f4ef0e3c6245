"""Unmodified Flax modules with and without jconv: `nnx.Conv(..., conv_general_dilated=jconv.conv_general_dilated)`.

For each layer, the same nnx.Conv (same parameters, channels-last as Flax lays them out) built twice, one with
lax's convolution (Flax's default) and one with jconv's, timed forward and forward+backward (output, input and
parameter gradients), all four programs round-robin in one process (run.py's interleaved_medians). Flax's
ConvTranspose takes no convolution argument, so the transposed rows compare `lax.conv_transpose` with
`jconv.conv_transpose` called directly. Median ms, with [q1-q3].

    python benchmarks/flax_modules.py [--rounds 6] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jconv  # noqa: E402
from jconv import dispatch, lax_api  # noqa: E402
from run import host_cpu, interleaved_pairs  # noqa: E402


class Layer(NamedTuple):
    name: str
    input_shape: tuple  # channels-last
    features: int
    kernel: tuple
    strides: tuple = None
    groups: int = 1
    padding: str = "SAME"
    transposed: bool = False


# The CPU suite's layers (benchmarks/suites.py), as a Flax model declares them.
LAYERS = (
    Layer("mbv2_dw3x3", (8, 56, 56, 128), 128, (3, 3), groups=128),
    Layer("mbv2_dw3x3_s2", (8, 56, 56, 144), 144, (3, 3), strides=(2, 2), groups=144),
    Layer("effnet_dw5x5", (8, 28, 28, 240), 240, (5, 5), groups=240),
    Layer("convnext_dw7x7", (8, 56, 56, 96), 96, (7, 7), groups=96),
    Layer("mamba_dw_k4 (causal)", (4, 2048, 512), 512, (4,), groups=512, padding="CAUSAL"),
    Layer("resnext_g32", (4, 28, 28, 256), 256, (3, 3), groups=32),
    Layer("grouped_g8", (8, 28, 28, 128), 128, (3, 3), groups=8),
    Layer("resnet50_1x1", (8, 28, 28, 256), 64, (1, 1)),
    Layer("resnet50_3x3", (8, 56, 56, 64), 64, (3, 3)),
    Layer("unet3d_3x3x3", (1, 32, 32, 32, 32), 32, (3, 3, 3)),
    Layer("dcgan_up_k4s2 (conv_transpose)", (8, 28, 28, 64), 32, (4, 4), strides=(2, 2), transposed=True),
    Layer("unet_up_k2s2 (conv_transpose)", (8, 28, 28, 128), 64, (2, 2), strides=(2, 2), transposed=True),
)


def module_call(layer: Layer, conv: Optional[callable]):
    """f(x, params) for the layer: an nnx.Conv (with `conv` as its convolution, or Flax's default), or for a
    transposed layer the convolution function itself (params: the kernel)."""
    if layer.transposed:
        conv_transpose = conv or lax.conv_transpose
        return lambda x, kernel: conv_transpose(x, kernel, layer.strides, layer.padding)
    extra = {} if conv is None else dict(conv_general_dilated=conv)
    module = nnx.Conv(layer.input_shape[-1], layer.features, layer.kernel, strides=layer.strides,
                      padding=layer.padding, feature_group_count=layer.groups, rngs=nnx.Rngs(0), **extra)
    graphdef, params = nnx.split(module)
    return lambda x, params, graphdef=graphdef: nnx.merge(graphdef, params)(x)


def parameters(layer: Layer):
    if layer.transposed:
        rng = np.random.default_rng(1)
        return jnp.asarray(rng.standard_normal((*layer.kernel, layer.input_shape[-1], layer.features)), jnp.float32)
    return nnx.split(nnx.Conv(layer.input_shape[-1], layer.features, layer.kernel, feature_group_count=layer.groups,
                              rngs=nnx.Rngs(0)))[1]


def jconv_lowering(layer: Layer, x, params) -> str:
    """The lowering jconv runs for the layer (dispatch's choice for the plan of each convolution it traces)."""
    describe = lambda outcome: dispatch.select(outcome.spec).lowering if isinstance(outcome, lax_api.Plan) else "lax"
    if layer.transposed:
        dn = lax.conv_dimension_numbers(x.shape, params.shape, ("NHWC", "HWIO", "NHWC"))
        pads = [lax_api._transpose_padding(k, s, layer.padding) for k, s in zip(layer.kernel, layer.strides)]
        return describe(lax_api.plan(x, params, (1,) * len(layer.kernel), pads, layer.strides, None, dn))
    chosen = set()

    def recording(*args, **kwargs):
        chosen.add(describe(lax_api.plan(*args, **kwargs)))
        return jconv.conv_general_dilated(*args, **kwargs)

    jax.eval_shape(module_call(layer, recording), x, params)
    return ",".join(sorted(chosen))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--only", nargs="*", help="layer names to run (default: all)")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {host_cpu()}, {args.rounds} rounds interleaved; median [q1-q3] ms\n")
    print("| layer | jconv lowering | Flax fwd | with jconv | speed-up | Flax fwd+bwd | with jconv | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for layer in LAYERS:
        if args.only and layer.name.split()[0] not in args.only:
            continue
        x = jnp.asarray(rng.standard_normal(layer.input_shape), jnp.float32)
        params = parameters(layer)
        jconv_conv = jconv.conv_transpose if layer.transposed else jconv.conv_general_dilated
        t = interleaved_pairs({"flax": module_call(layer, None), "jconv": module_call(layer, jconv_conv)}, x, params,
                              args.rounds)
        cell = lambda k: f"{t[k].median * 1e3:.2f} [{t[k].q1 * 1e3:.2f}-{t[k].q3 * 1e3:.2f}]"
        ratio = lambda kind: f"{t['flax', kind].median / t['jconv', kind].median:.2f}x"
        print(f"| {layer.name} | {jconv_lowering(layer, x, params)} | {cell(('flax', 'fwd'))} | "
              f"{cell(('jconv', 'fwd'))} | {ratio('fwd')} | {cell(('flax', 'fb'))} | {cell(('jconv', 'fb'))} | "
              f"{ratio('fb')} |", flush=True)


if __name__ == "__main__":
    main()
