import os

import jax
import pytest
from hypothesis import HealthCheck, settings

# float64 parity against torch needs x64; every test module sees the same setting.
jax.config.update("jax_enable_x64", True)

settings.register_profile(
    "jconv", max_examples=int(os.environ.get("JCONV_HYPOTHESIS_EXAMPLES", "25")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("CI") == "true",
)
settings.load_profile("jconv")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a GPU; skipped without one")
    config.addinivalue_line("markers", "slow: long-running; deselect with -m 'not slow'")


def pytest_collection_modifyitems(config, items):
    if jax.default_backend() != "gpu":
        skip = pytest.mark.skip(reason="needs a GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
