"""Why a backend cannot run here (None when it can), for tests that run on every executor."""
import importlib


def skip_reason(device: str):
    """None when ``device``'s executor can run here, else the reason (its module's ``available()``)."""
    if device == "numpy":
        return None
    try:
        module = importlib.import_module(f"mlxarm.backend.{device}")
    except ImportError as e:
        return f"the {device} backend cannot be imported ({e})"
    return module.available()


def require(device: str) -> None:
    """Skip the calling test, with the reason, when ``device``'s executor cannot run here."""
    import pytest

    reason = skip_reason(device)
    if reason:
        pytest.skip(f"{device} unavailable: {reason}")
