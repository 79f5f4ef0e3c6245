"""Real layer shapes, per platform. One Case per layer: PyTorch-style arguments for a jconv function.

CPU suites are scaled down (batch, sometimes length) so that `python benchmarks/run.py` finishes in under 10
minutes on the 2-core CI machine; GPU suites use the shapes of ../shared/BASELINES.md.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    fn: str  # jconv function name
    input_shape: Tuple[int, ...]  # PyTorch layout (N, C, *spatial)
    weight_shape: Tuple[int, ...]  # PyTorch layout
    kwargs: tuple = ()  # sorted (key, value) pairs: stride, padding, dilation, groups, output_padding
    dtype: str = "float32"
    channels_last: bool = False

    @property
    def options(self) -> dict:
        return dict(self.kwargs)

    @property
    def transposed(self) -> bool:
        return self.fn.startswith("conv_transpose")

    def label(self) -> str:
        layout = "NHWC" if self.channels_last else "NCHW"
        return f"{self.name} {self.dtype} {layout}"


def case(name, fn, x, w, dtype="float32", channels_last=False, **kwargs):
    return Case(name, fn, tuple(x), tuple(w), tuple(sorted(kwargs.items())), dtype, channels_last)


CPU = [
    case("resnet50_3x3", "conv2d", (8, 64, 56, 56), (64, 64, 3, 3), padding=1),
    case("resnet50_1x1", "conv2d", (8, 256, 28, 28), (64, 256, 1, 1)),
    case("resnet50_expand_1x1", "conv2d", (8, 64, 56, 56), (256, 64, 1, 1)),  # layer1's 64 -> 256 at 56x56
    case("resnext_g32", "conv2d", (4, 256, 28, 28), (256, 8, 3, 3), padding=1, groups=32),
    case("grouped_g8", "conv2d", (8, 128, 28, 28), (128, 16, 3, 3), padding=1, groups=8),
    case("mbv2_dw3x3", "conv2d", (8, 128, 56, 56), (128, 1, 3, 3), padding=1, groups=128),
    case("mbv2_dw3x3_s2", "conv2d", (8, 144, 56, 56), (144, 1, 3, 3), stride=2, padding=1, groups=144),
    case("effnet_dw5x5", "conv2d", (8, 240, 28, 28), (240, 1, 5, 5), padding=2, groups=240),
    case("convnext_dw7x7", "conv2d", (8, 96, 56, 56), (96, 1, 7, 7), padding=3, groups=96),
    case("convnext_dw7x7", "conv2d", (8, 96, 56, 56), (96, 1, 7, 7), padding=3, groups=96, channels_last=True),
    case("replknet_dw31", "conv2d", (2, 64, 28, 28), (64, 1, 31, 31), padding=15, groups=64),
    case("dilated_d4", "conv2d", (8, 64, 56, 56), (64, 64, 3, 3), padding=4, dilation=4),
    case("wavenet_d16", "conv1d", (4, 64, 8192), (64, 64, 3), padding=16, dilation=16),
    # TCN's causal conv (Bai et al. 2018): padding (k-1)*d on both sides, the extra outputs cropped afterwards
    case("tcn_causal_d4", "conv1d", (4, 64, 8192), (64, 64, 3), padding=8, dilation=4),
    case("mamba_dw_k4", "conv1d", (4, 512, 2048), (512, 1, 4), padding=3, groups=512),
    case("unet3d_3x3x3", "conv3d", (1, 32, 32, 32, 32), (32, 32, 3, 3, 3), padding=1),
    # transposed convolutions: decoders, GAN generators, vocoders (../shared/BASELINES.md)
    case("dcgan_up_k4s2", "conv_transpose2d", (8, 64, 28, 28), (64, 32, 4, 4), stride=2, padding=1),
    case("hifigan_up_k8s4", "conv_transpose1d", (4, 128, 2048), (128, 64, 8), stride=4, padding=2),
    case("unet3d_up_k3s2", "conv_transpose3d", (2, 32, 16, 16, 16), (32, 16, 3, 3, 3), stride=2, padding=1,
         output_padding=1),
    case("dw_up_k4s2", "conv_transpose2d", (8, 64, 28, 28), (64, 1, 4, 4), stride=2, padding=1, groups=64),
    case("unet_up_k2s2", "conv_transpose2d", (8, 128, 28, 28), (128, 64, 2, 2), stride=2),  # U-Net's up-conv
]

GPU = []
for dtype in ("bfloat16", "float32"):
    GPU += [
        case("resnet3x3", "conv2d", (32, 256, 56, 56), (256, 256, 3, 3), dtype, True, padding=1),
        case("resnet1x1", "conv2d", (32, 256, 56, 56), (64, 256, 1, 1), dtype, True),
        case("resnext_g32", "conv2d", (32, 256, 56, 56), (256, 8, 3, 3), dtype, True, padding=1, groups=32),
        case("dw3x3_mbv2", "conv2d", (64, 384, 28, 28), (384, 1, 3, 3), dtype, True, padding=1, groups=384),
        case("dw5x5_effnet", "conv2d", (64, 240, 28, 28), (240, 1, 5, 5), dtype, True, padding=2, groups=240),
        case("dw7x7_cnxt1", "conv2d", (64, 96, 56, 56), (96, 1, 7, 7), dtype, True, padding=3, groups=96),
        case("dw7x7_cnxt3", "conv2d", (64, 384, 14, 14), (384, 1, 7, 7), dtype, True, padding=3, groups=384),
        case("dw31_replk", "conv2d", (32, 128, 56, 56), (128, 1, 31, 31), dtype, True, padding=15, groups=128),
        case("dil3x3_d4", "conv2d", (32, 256, 56, 56), (256, 256, 3, 3), dtype, True, padding=4, dilation=4),
        case("c1d_wavenet", "conv1d", (16, 128, 16384), (256, 128, 3), dtype, True, padding=64, dilation=64),
        case("c1d_tcn_causal", "conv1d", (16, 128, 16384), (128, 128, 3), dtype, True, padding=16, dilation=8),
        case("c1d_dw_k4", "conv1d", (16, 2048, 4096), (2048, 1, 4), dtype, True, padding=3, groups=2048),
        case("unet3d_3x3x3", "conv3d", (2, 64, 64, 64, 64), (64, 64, 3, 3, 3), dtype, True, padding=1),
        case("dcgan_up_k4s2", "conv_transpose2d", (64, 256, 32, 32), (256, 128, 4, 4), dtype, True, stride=2,
             padding=1),
        case("hifigan_up_k16s8", "conv_transpose1d", (16, 512, 4096), (512, 256, 16), dtype, True, stride=8,
             padding=4),
        case("unet3d_up_k3s2", "conv_transpose3d", (2, 128, 32, 32, 32), (128, 64, 3, 3, 3), dtype, True,
             stride=2, padding=1, output_padding=1),
    ]

SUITES = {"cpu": CPU, "gpu": GPU, "tpu": GPU}
