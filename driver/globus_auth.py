"""Globus login for the transfer seam: a ``TransferClient`` from a ``globus_sdk`` app.

Who logs in:

- the team's **service identity** (a confidential client) when ``REMOTE_AL_CLIENT_ID`` and
  ``REMOTE_AL_CLIENT_SECRET`` are set, or else ``GLOBUS_COMPUTE_CLIENT_ID`` and
  ``GLOBUS_COMPUTE_CLIENT_SECRET`` (the variables the Globus Compute SDK reads):
  ``globus_sdk.ClientApp``, no browser;
- otherwise **you**: ``globus_sdk.UserApp`` with a native-app client id
  (``REMOTE_AL_NATIVE_CLIENT_ID``, default: the Globus Compute SDK's public one), a
  browser login the first time (``remote-al login``), refresh tokens afterwards.

Tokens live in one JSON file (``REMOTE_AL_TOKEN_FILE``, default
``~/.remote-al/globus-tokens.json``) readable by its owner only: a file open to the
group or others is set back to 0600 (with a warning), a file owned by someone else or a
symlink is refused. The user and each service identity keep separate namespaces in it.

Collections on Globus Connect Server need consent to their ``data_access`` scope once
per identity: ``remote-al login --collection <id>`` asks for it (:func:`login`).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Iterable, Mapping

from driver.errors import RemoteALError

log = logging.getLogger(__name__)

APP_NAME = "remote-al"
# The Globus Compute SDK's native-app client id (globus_compute_sdk.sdk.auth.globus_app);
# a team may register its own native app and set REMOTE_AL_NATIVE_CLIENT_ID.
DEFAULT_NATIVE_CLIENT_ID = "4cf29807-cf21-49ec-9443-ff9a3fb9f81c"
SERVICE_IDENTITY_VARS = (
    ("REMOTE_AL_CLIENT_ID", "REMOTE_AL_CLIENT_SECRET"),
    ("GLOBUS_COMPUTE_CLIENT_ID", "GLOBUS_COMPUTE_CLIENT_SECRET"),
)


class AuthError(RemoteALError):
    """Credentials are missing, half-set, or stored unsafely. Raised before any request."""


def token_file(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("REMOTE_AL_TOKEN_FILE") or "~/.remote-al/globus-tokens.json").expanduser()


def secure_token_file(path: str | os.PathLike, fix: bool = True) -> Path:
    """Check that the token file is private to its owner; return its path.

    Creates the parent directory as 0700. An existing file must be a regular file owned
    by this user; group/other permission bits are removed (``fix``) or refused.
    """
    path = Path(path).expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.is_symlink():
        raise AuthError(f"token file {path} is a symlink; refusing it (use a regular file or set "
                        "REMOTE_AL_TOKEN_FILE)")
    if not path.exists():
        return path
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise AuthError(f"token file {path} is not a regular file")
    if st.st_uid != os.getuid():
        raise AuthError(f"token file {path} belongs to another user (uid {st.st_uid}); refusing to "
                        "use or change it: set REMOTE_AL_TOKEN_FILE to a file of your own")
    loose = stat.S_IMODE(st.st_mode) & 0o077
    if loose:
        if not fix:
            raise AuthError(f"token file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):o}): "
                            f"chmod 600 {path}")
        os.chmod(path, 0o600)
        log.warning("token file %s was open to group/others (mode %o); set to 0600",
                    path, stat.S_IMODE(st.st_mode))
    return path


def service_credentials(env: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(client id, secret)`` of the team's service identity, or None to log in as a user."""
    env = os.environ if env is None else env
    for id_var, secret_var in SERVICE_IDENTITY_VARS:
        client_id, secret = env.get(id_var), env.get(secret_var)
        if client_id and secret:
            return client_id, secret
        if secret:
            raise AuthError(f"{secret_var} is set but {id_var} is not: set both to use the service "
                            "identity, or unset both to log in as yourself")
    return None


def make_app(env: Mapping[str, str] | None = None, token_path: str | os.PathLike | None = None,
             interactive: bool = True):
    """A ``ClientApp`` (service identity) or ``UserApp`` (you) storing tokens safely.

    ``interactive=False``: a missing or expired login raises instead of opening a login
    flow (for a driver nobody watches); the transfer seam reports it with the fix.
    """
    from globus_sdk import ClientApp, GlobusAppConfig, UserApp
    from globus_sdk.globus_app.config import resolve_by_login_flow
    from globus_sdk.token_storage import JSONTokenStorage

    env = os.environ if env is None else env
    path = secure_token_file(token_path or token_file(env))
    creds = service_credentials(env)
    namespace = f"client-{creds[0]}" if creds else "user"

    def config():
        return GlobusAppConfig(
            token_storage=JSONTokenStorage(path, namespace=namespace),
            request_refresh_tokens=True,
            token_validation_error_handler=resolve_by_login_flow if interactive else None,
        )

    if creds:
        return ClientApp(APP_NAME, client_id=creds[0], client_secret=creds[1], config=config())
    client_id = env.get("REMOTE_AL_NATIVE_CLIENT_ID") or DEFAULT_NATIVE_CLIENT_ID
    return UserApp(APP_NAME, client_id=client_id, config=config())


def transfer_client(collections: Iterable[str] = (), app=None, **app_kwargs):
    """A ``globus_sdk.TransferClient`` on ``app`` (default :func:`make_app`).

    ``collections``: Globus Connect Server mapped collections whose ``data_access``
    scope the client asks for (not for guest or Globus Connect Personal collections).
    """
    import globus_sdk

    client = globus_sdk.TransferClient(app=app or make_app(**app_kwargs))
    collections = list(collections)
    if collections:
        client.add_app_data_access_scope(collections)
    return client


def login(collections: Iterable[str] = (), force: bool = False, **app_kwargs):
    """Log in (browser for a user, client credentials for the service identity) and
    consent to the ``data_access`` scope of ``collections``; return the app."""
    collections = list(collections)
    app = make_app(interactive=True, **app_kwargs)
    transfer_client(collections, app=app)
    app.login(force=force or bool(collections))
    return app


__all__ = ["AuthError", "make_app", "transfer_client", "login", "secure_token_file",
           "service_credentials", "token_file"]
