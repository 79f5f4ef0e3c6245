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


# Modules whose tests share one expensive session-scoped fixture (test_sharding.py's 8-device subprocess, ~70 s;
# test_determinism.py's two processes running every lowering): under `--dist loadgroup` each runs whole on one
# worker, so its fixture runs once. An `xdist_group` mark is meant to do this, but pytest-xdist 3.8 tags grouped
# tests by assigning `item._nodeid`, which pytest 9.2 no longer reads (it keeps the id in `item._id`), so the mark
# is silently ignored and both workers ran the sharding subprocess. Grouping by module in the scheduler does not
# depend on either's internals.
ONE_WORKER_MODULES = ("tests/test_sharding.py", "tests/test_determinism.py")


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown where xdist is not installed or disabled
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None  # xdist's own scheduler
    from xdist.scheduler import LoadGroupScheduling

    class ModuleGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid):
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else super()._split_scope(nodeid)

    return ModuleGroupScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    if jax.default_backend() != "gpu":
        skip = pytest.mark.skip(reason="needs a GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
