"""Backends: where remote functions run. ``local`` (embedded default) and ``globus``."""

from driver.backends.base import FUNCTIONS, MAX_PAYLOAD_BYTES, Backend, Submission

__all__ = ["Backend", "Submission", "FUNCTIONS", "MAX_PAYLOAD_BYTES"]


def make_backend(kind: str, **kwargs) -> Backend:
    """Build a backend by name. ``kwargs`` go to its constructor."""
    if kind == "local":
        from driver.backends.local import LocalBackend

        return LocalBackend(**kwargs)
    if kind == "globus":
        from driver.backends.globus import GlobusBackend

        return GlobusBackend(**kwargs)
    raise ValueError(f"unknown backend {kind!r}: use 'local' or 'globus'")
