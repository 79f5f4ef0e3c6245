"""The package's one version: jconv.__version__, pyproject.toml and the autotune cache's keys read it."""

__version__ = "0.1.0"
