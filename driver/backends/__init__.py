"""Backends: where remote functions run. ``local`` (embedded default), ``globus`` and
``colmena`` (a Colmena task server; the ``remote-al[colmena]`` extra)."""

from driver.backends.base import FUNCTIONS, MAX_PAYLOAD_BYTES, Backend, Submission
from driver.errors import ConfigError

__all__ = ["Backend", "Submission", "FUNCTIONS", "MAX_PAYLOAD_BYTES"]


def make_backend(kind: str, **kwargs) -> Backend:
    """Build a backend by name. ``kwargs`` go to its constructor; ``local`` takes
    ``lifetime``: "driver" (engines in the driver's process) or "campaign" (in a service
    process that outlives the driver: ``driver.backends.local_detached``)."""
    if kind == "local":
        if kwargs.pop("lifetime", "driver") == "campaign":
            from driver.backends.local_detached import DetachedLocalBackend

            return DetachedLocalBackend(**kwargs)
        from driver.backends.local import LocalBackend

        return LocalBackend(**kwargs)
    if kind == "globus":
        from driver.backends.globus import GlobusBackend

        return GlobusBackend(**kwargs)
    if kind == "colmena":
        try:
            from driver.backends.colmena import ColmenaBackend
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] != "colmena":
                raise
            raise ConfigError("backend.kind", "the colmena backend needs Colmena, which is not installed",
                              "pip install 'remote-al[colmena]'") from exc
        return ColmenaBackend(**kwargs)
    raise ValueError(f"unknown backend {kind!r}: use 'local', 'globus' or 'colmena'")
