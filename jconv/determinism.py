"""Deterministic mode (placeholder state; see use_deterministic_algorithms)."""

_enabled = False


def are_deterministic_algorithms_enabled() -> bool:
    return _enabled
