"""jconv: PyTorch-exact convolutions for JAX, lowered to whatever is fastest and correct."""

from jconv import determinism as _determinism
from jconv.determinism import (
    are_deterministic_algorithms_enabled,
    deterministic_jit,
    is_deterministic_algorithms_warn_only_enabled,
    use_deterministic_algorithms,
)
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

# JCONV_DETERMINISTIC=1 must take effect before any JAX backend starts, so it is read at import.
_determinism._enable_from_env()

__all__ = [
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "explain", "Choice", "ConvSpec", "LOWERING_NAMES",
    "use_deterministic_algorithms", "are_deterministic_algorithms_enabled",
    "is_deterministic_algorithms_warn_only_enabled", "deterministic_jit",
]
