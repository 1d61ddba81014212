"""The transfer seam: move files and directories between sites, verified by checksum.

A *site* is a named root directory and, for Globus, the collection that serves it
(the team file's ``[sites.<name>] root = ..., collection = ...``). Every path handed
to the seam is relative to a site's root and goes through :func:`safe_join`, which
refuses ``..``, absolute paths and symlinks that lead out of the root.

``submit(src_site, src_path, dst_site, dst_path, label) -> transfer id`` starts a
transfer; ``poll(transfer id) -> TransferStatus`` never blocks. Transfers are recorded
in a dict-like ``meta`` (the campaign state's meta table), so a restarted driver finds
the ones still in flight (:meth:`Transfer.in_flight`) and keeps polling them.

Two implementations (``remote-al`` picks one by name):

- :class:`driver.transfer_local.LocalTransfer` copies on this machine: each file is written to a temporary
  name next to its destination, checked against the source's sha256, then renamed
  into place, so an interrupted or corrupted copy never leaves a partial file where
  the destination should be. Files whose sha256 already matches are skipped.
- :class:`driver.transfer_globus.GlobusTransfer` submits a Globus Transfer task between the two sites'
  collections (``sync_level="checksum"``, ``verify_checksum=True``). A submission id
  is fetched and persisted first, so resubmitting after a crash cannot start the
  same transfer twice (the service answers ``Duplicate`` with the first task).

Errors: :class:`UnsafePath` (a path would escape its root; raised before anything
moves), :class:`TransferNeedsAction` and its :class:`ConsentRequired` (a person must
log in, consent or ask an administrator; the message says what to run),
``BackendUnavailable`` (the service cannot be reached now; retry later, nothing lost).
A failed transfer is a status (``FAILED`` with its reason); :func:`wait_for` raises
:class:`TransferFailed` for it.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Mapping, MutableMapping, Sequence

from driver.team import Site
from driver.errors import BackendUnavailable, ConfigError, RemoteALError

ACTIVE, SUCCEEDED, FAILED = "ACTIVE", "SUCCEEDED", "FAILED"
META_TRANSFERS = "transfers"  # meta key: JSON {transfer id: record}
META_SUBMISSIONS = "transfer_submissions"  # meta key: JSON {label: Globus submission id}
CHUNK = 1 << 20


# ---------------------------------------------------------------------- errors
class TransferError(RemoteALError):
    """Raised when a transfer cannot be started or watched (no files, a missing source, a
    checksum mismatch, a refused request); base of the transfer seam's errors."""


class UnsafePath(TransferError, ValueError):
    """A path would lead out of its site or campaign root. Raised before anything moves."""


class TransferFailed(TransferError):
    """A transfer ended FAILED (raised by :func:`wait_for`)."""

    def __init__(self, transfer_id: str, detail: str):
        self.transfer_id = transfer_id
        self.detail = detail
        super().__init__(f"transfer {transfer_id} failed: {detail}")


class TransferNeedsAction(TransferError):
    """A person must act (log in, consent, ask an administrator) before data moves.

    Raised by ``submit`` (nothing was submitted) or ``poll`` (the task waits at the
    service, INACTIVE or paused, and resumes once the cause is fixed; keep polling).
    """

    def __init__(self, message: str, fix: str, transfer_id: str | None = None):
        self.fix = fix
        self.transfer_id = transfer_id
        super().__init__(f"{message} (fix: {fix})")


class ConsentRequired(TransferNeedsAction):
    """Raised by a Globus transfer's ``submit`` or ``poll`` when Globus needs consent to a
    collection's ``data_access`` scope; the message names the ``remote-al login`` to run."""

    def __init__(self, collections: Sequence[str], scopes: Sequence[str], where: str,
                 transfer_id: str | None = None):
        self.collections = list(collections)
        self.scopes = list(scopes)
        flags = " ".join(f"--collection {c}" for c in self.collections) or "--team team.toml"
        super().__init__(
            f"{where}: Globus needs consent to the data_access scope of collection(s) "
            f"{', '.join(self.collections) or '(see required scopes)'}"
            + (f"; required scopes: {', '.join(self.scopes)}" if self.scopes else ""),
            f"run `remote-al login {flags}` and grant consent (with the team's service identity "
            "set in REMOTE_AL_CLIENT_ID/REMOTE_AL_CLIENT_SECRET the same command requests the "
            "scope without a browser), then run again",
            transfer_id,
        )


# ----------------------------------------------------------------- path safety
def safe_join(root: str | os.PathLike, relpath: str | os.PathLike, *, local: bool = True):
    """``root / relpath``, refusing any ``relpath`` that would lead out of ``root``.

    Refused: absolute paths, ``..`` components, NUL bytes and (``local=True``) symlinks
    anywhere along the way whose target lies outside ``root``. Returns a ``Path``
    (local) or a ``PurePosixPath`` (a path on a remote collection, checked lexically).
    """
    text = os.fspath(relpath)
    if "\x00" in text:
        raise UnsafePath(f"path {text!r} contains a NUL byte")
    pure = PurePosixPath(text)
    if pure.is_absolute() or text.startswith("~"):
        raise UnsafePath(f"path {text!r} is absolute; expected a path relative to {root}")
    if ".." in pure.parts:
        raise UnsafePath(f"path {text!r} climbs out of {root} with '..'")
    if not local:
        return PurePosixPath(os.fspath(root)).joinpath(*pure.parts)
    base = Path(root).expanduser()
    joined = base.joinpath(*pure.parts)
    real_root, real = base.resolve(), joined.resolve()
    if real != real_root and real_root not in real.parents:
        raise UnsafePath(f"path {text!r} under {root} leads to {real} through a symlink, "
                         "outside the root")
    return joined


def relative_to_root(root: str | os.PathLike, path: str | os.PathLike, *, local: bool = True) -> str:
    """``path`` (absolute, or relative to ``root``) as a path relative to ``root``.

    Raises :class:`UnsafePath` if it lies outside ``root`` (checked as :func:`safe_join`).
    """
    p = PurePosixPath(os.fspath(path))
    if p.is_absolute():
        if ".." in p.parts:
            raise UnsafePath(f"path {path} contains '..'")
        bases = [PurePosixPath(os.fspath(root))]
        if local:
            bases = [PurePosixPath(Path(root).expanduser().absolute()),
                     PurePosixPath(Path(root).expanduser().resolve())]
        for base in bases:
            try:
                p = p.relative_to(base)
                break
            except ValueError:
                continue
        else:
            raise UnsafePath(f"path {path} lies outside the root {root}")
    safe_join(root, p, local=local)
    return p.as_posix()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------- records
@dataclass(frozen=True)
class TransferStatus:
    state: str  # ACTIVE | SUCCEEDED | FAILED
    detail: str = ""

    @property
    def done(self) -> bool:
        return self.state in (SUCCEEDED, FAILED)


@dataclass(frozen=True)
class TransferItem:
    """One file or directory, paths relative to the source and destination site roots.
    ``recursive``: a directory (None: look it up)."""

    src: str
    dst: str
    recursive: bool | None = None


class Transfer(abc.ABC):
    """The seam. ``sites``: name -> ``Site``; ``meta``: a persisted dict-like."""

    name = "abstract"

    def __init__(self, sites: Mapping[str, Site], meta: MutableMapping[str, str] | None = None):
        self.sites = dict(sites)
        self.meta: MutableMapping[str, str] = meta if meta is not None else {}

    def submit(self, src_site: str, src_path: str, dst_site: str, dst_path: str, label: str,
               recursive: bool | None = None) -> str:
        """Start moving one file or directory; return the transfer id."""
        return self.submit_items(src_site, dst_site, [TransferItem(src_path, dst_path, recursive)], label)

    def submit_items(self, src_site: str, dst_site: str, items: Iterable[TransferItem], label: str) -> str:
        """Start moving several items between two sites as one transfer; return its id.

        Every path is checked with :func:`safe_join` before anything moves.
        """
        items = list(items)
        if not items:
            raise TransferError(f"transfer {label!r} lists no files")
        src_root, dst_root = self.site(src_site).root, self.site(dst_site).root
        for it in items:  # every path checked before anything moves
            safe_join(src_root, it.src, local=self._local(src_site))
            safe_join(dst_root, it.dst, local=self._local(dst_site))
        return self._submit(src_site, dst_site, items, label)

    @abc.abstractmethod
    def _submit(self, src_site: str, dst_site: str, items: list[TransferItem], label: str) -> str: ...

    @abc.abstractmethod
    def poll(self, transfer_id: str) -> TransferStatus:
        """The transfer's state now (never blocks)."""

    def _local(self, site: str) -> bool:
        return True

    # -- persisted records
    def records(self) -> dict[str, dict]:
        return json.loads(self.meta.get(META_TRANSFERS) or "{}")

    def in_flight(self) -> dict[str, str]:
        """``{transfer id: label}`` of transfers not finished when last polled."""
        return {tid: rec["label"] for tid, rec in self.records().items() if rec["state"] == ACTIVE}

    def _save(self, transfer_id: str, **fields: Any) -> None:
        recs = self.records()
        recs[transfer_id] = {**recs.get(transfer_id, {}), **fields}
        self.meta[META_TRANSFERS] = json.dumps(recs, sort_keys=True)

    def _finish(self, transfer_id: str, status: TransferStatus) -> TransferStatus:
        if status.done:
            rec = self.records().get(transfer_id)
            if rec is not None and rec.get("state") != status.state:
                self._save(transfer_id, state=status.state, detail=status.detail, finished=time.time())
        return status

    def site(self, name: str) -> Site:
        try:
            return self.sites[name]
        except KeyError:
            raise ConfigError(f"team.sites.{name}", f"no site {name!r} (has: {sorted(self.sites) or 'none'})",
                              f"add [sites.{name}] root = \"...\", collection = \"...\" to the team file") from None


def wait_for(transfer: Transfer, transfer_ids: Iterable[str], timeout_s: float = 3600.0,
             interval_s: float = 10.0, say: Callable[[str], None] | None = None,
             sleep: Callable[[float], None] = time.sleep) -> dict[str, TransferStatus]:
    """Poll until every transfer is done; raise :class:`TransferFailed` for a failed one.

    ``TransferNeedsAction`` is reported through ``say`` (once per message) and the
    transfer is polled on; ``TimeoutError`` after ``timeout_s`` (the transfers go on).
    """
    ids = list(transfer_ids)
    said: dict[str, str] = {}
    out: dict[str, TransferStatus] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for tid in ids:
            if tid in out:
                continue
            try:
                st = transfer.poll(tid)
            except (TransferNeedsAction, BackendUnavailable) as exc:
                if say and said.get(tid) != str(exc):
                    say(str(exc))
                said[tid] = str(exc)
                continue
            if st.state == FAILED:
                raise TransferFailed(tid, st.detail)
            if st.done:
                out[tid] = st
        if len(out) == len(ids):
            return out
        if time.monotonic() >= deadline:
            raise TimeoutError(f"transfers {sorted(set(ids) - set(out))} still running after "
                               f"{timeout_s:.0f} s; they go on, poll them again later")
        sleep(interval_s)


__all__ = [
    "ACTIVE", "SUCCEEDED", "FAILED", "TransferStatus", "TransferItem", "Transfer", "TransferError",
    "TransferFailed", "TransferNeedsAction", "ConsentRequired", "UnsafePath", "safe_join",
    "relative_to_root", "sha256_file", "wait_for",
]
