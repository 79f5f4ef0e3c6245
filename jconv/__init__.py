"""jconv: PyTorch-exact convolutions for JAX, lowered to whatever is fastest and correct."""

from jconv.determinism import are_deterministic_algorithms_enabled
from jconv.dispatch import LOWERING_NAMES, Choice, explain
from jconv.functional import (
    conv1d,
    conv2d,
    conv3d,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
)
from jconv.spec import ConvSpec

__version__ = "0.1.0"

__all__ = [
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "explain", "Choice", "ConvSpec", "LOWERING_NAMES", "are_deterministic_algorithms_enabled",
]
