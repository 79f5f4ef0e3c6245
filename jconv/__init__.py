"""jconv: PyTorch-exact convolutions for JAX, lowered to whatever is fastest and correct."""

from jconv import determinism as _determinism
from jconv._version import __version__
from jconv.determinism import (
    are_deterministic_algorithms_enabled,
    deterministic_jit,
    is_deterministic_algorithms_warn_only_enabled,
    use_deterministic_algorithms,
)
from jconv.dispatch import LOWERING_NAMES, Candidate, Choice, explain, report, tune
from jconv.functional import (
    conv1d,
    conv2d,
    conv3d,
    conv_transpose1d,
    conv_transpose2d,
    conv_transpose3d,
)
from jconv.lax_api import conv_general_dilated, conv_transpose
from jconv.spec import ConvSpec
from jconv.tuning import AutotuneCache, autotune, autotune_cache



def __getattr__(name: str):
    # jconv.nn and jconv.linen need flax, an optional dependency: imported on first use, so that `import jconv`
    # works without it and `jconv.nn` works without a separate import.
    if name in ("nn", "linen"):
        import importlib

        return importlib.import_module(f"jconv.{name}")
    raise AttributeError(f"module 'jconv' has no attribute {name!r}")


# JCONV_DETERMINISTIC=1 must take effect before any JAX backend starts, so it is read at import.
_determinism._enable_from_env()

__all__ = [
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "conv_general_dilated", "conv_transpose", "explain", "Choice", "Candidate", "ConvSpec", "LOWERING_NAMES",
    "autotune", "autotune_cache", "AutotuneCache", "tune", "report", "__version__",
    "use_deterministic_algorithms", "are_deterministic_algorithms_enabled",
    "is_deterministic_algorithms_warn_only_enabled", "deterministic_jit",
]
