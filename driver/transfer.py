"""The transfer seam: move files and directories between sites, verified by checksum.

A *site* is a named root directory and, for Globus, the collection that serves it
(the team file's ``[sites.<name>] root = ..., collection = ...``). Every path handed
to the seam is relative to a site's root and goes through :func:`safe_join`, which
refuses ``..``, absolute paths and symlinks that lead out of the root.

``submit(src_site, src_path, dst_site, dst_path, label) -> transfer id`` starts a
transfer; ``poll(transfer id) -> TransferStatus`` never blocks. Transfers are recorded
in a dict-like ``meta`` (the campaign state's meta table), so a restarted driver finds
the ones still in flight (:meth:`Transfer.in_flight`) and keeps polling them.

- :class:`LocalTransfer` copies on this machine: each file is written to a temporary
  name next to its destination, checked against the source's sha256, then renamed
  into place, so an interrupted or corrupted copy never leaves a partial file where
  the destination should be. Files whose sha256 already matches are skipped.
- :class:`GlobusTransfer` submits a Globus Transfer task between the two sites'
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
import re
import shutil
import time
import uuid
from contextlib import contextmanager
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
    """A transfer could not be started or watched."""


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
    """Globus needs consent to a collection's ``data_access`` scope."""

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


# ------------------------------------------------------------------------ local
def _default_copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout, CHUNK)
        fout.flush()
        os.fsync(fout.fileno())


class LocalTransfer(Transfer):
    """Copies between site roots on this machine (the embedded default).

    ``copy_file(src, tmp)``: how bytes get from a source file to the temporary file
    (default: a plain copy with fsync); whatever it writes is verified by sha256.
    The copy happens inside ``submit``; ``poll`` reports its recorded outcome.
    """

    name = "local"

    def __init__(self, sites: Mapping[str, Site], meta: MutableMapping[str, str] | None = None,
                 copy_file: Callable[[Path, Path], None] = _default_copy):
        super().__init__(sites, meta)
        self.copy_file = copy_file

    def _submit(self, src_site: str, dst_site: str, items: list[TransferItem], label: str) -> str:
        dst_root = self.site(dst_site).root
        # The whole file list, each path checked, before anything moves.
        files = [(src, safe_join(dst_root, rel)) for it in items for src, rel in self._files(src_site, it)]
        tid = f"local-{uuid.uuid4()}"
        self._save(tid, label=label, src_site=src_site, dst_site=dst_site,
                   items=[[it.src, it.dst] for it in items], state=ACTIVE, detail="", submitted=time.time())
        copied = unchanged = nbytes = 0
        try:
            for src, dst in files:
                if self._copy_verified(src, dst):
                    copied += 1
                    nbytes += src.stat().st_size
                else:
                    unchanged += 1
            status = TransferStatus(SUCCEEDED, f"{copied} files copied ({nbytes} bytes), {unchanged} "
                                               "unchanged; sha256 verified")
        except (OSError, TransferError) as exc:
            status = TransferStatus(FAILED, f"{type(exc).__name__}: {exc}")
        self._finish(tid, status)
        return tid

    def poll(self, transfer_id: str) -> TransferStatus:
        rec = self.records().get(transfer_id)
        if rec is None:
            raise TransferError(f"no local transfer {transfer_id} in this campaign's records")
        if rec["state"] == ACTIVE:  # the copying process died before it finished
            return self._finish(transfer_id, TransferStatus(
                FAILED, "interrupted before it finished (files are complete or absent, never half-written "
                "under their own names); submit it again"))
        return TransferStatus(rec["state"], rec.get("detail", ""))

    def _files(self, src_site: str, item: TransferItem) -> Iterable[tuple[Path, str]]:
        """(source file, destination path relative to the destination root) pairs."""
        root = self.site(src_site).root
        src = safe_join(root, item.src)
        if not src.exists():
            raise TransferError(f"{item.src} does not exist in site {src_site!r} ({root})")
        if not src.is_dir():
            if item.recursive:
                raise TransferError(f"{item.src} is a file, not a directory")
            yield src, item.dst
            return
        for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
            parts = Path(dirpath).relative_to(src).parts
            real = safe_join(root, PurePosixPath(item.src, *parts)).resolve()
            ancestors = {safe_join(root, PurePosixPath(item.src, *parts[:k])).resolve()
                         for k in range(len(parts))}
            if real in ancestors:  # a symlink back up the tree: a loop
                dirnames[:] = []
                continue
            rel_dir = PurePosixPath(*parts)
            dirnames.sort()
            for name in sorted(filenames):
                rel = rel_dir / name
                yield safe_join(root, PurePosixPath(item.src) / rel), str(PurePosixPath(item.dst) / rel)

    def _copy_verified(self, src: Path, dst: Path) -> bool:
        """Copy ``src`` to ``dst`` through a verified temporary file; False if unchanged."""
        want = sha256_file(src)
        if dst.is_dir():
            raise TransferError(f"destination {dst} is a directory, source {src} a file")
        if dst.exists() and sha256_file(dst) == want:
            return False
        dst.parent.mkdir(parents=True, exist_ok=True)
        for stale in dst.parent.glob(f".{dst.name}.part-*"):  # left by a killed copy
            stale.unlink(missing_ok=True)
        tmp = dst.with_name(f".{dst.name}.part-{uuid.uuid4().hex[:8]}")
        try:
            self.copy_file(src, tmp)
            got = sha256_file(tmp)
            if got != want:
                raise TransferError(f"checksum mismatch copying {src} to {dst}: sha256 {got[:12]}... "
                                    f"!= {want[:12]}...; destination left unchanged")
            shutil.copymode(src, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
        return True


# ----------------------------------------------------------------------- globus
_SCOPE_COLLECTION = re.compile(r"/scopes/([0-9a-fA-F-]{36})/data_access")
_LABEL_CHARS = re.compile(r"[^A-Za-z0-9 _,.\-]")


class GlobusTransfer(Transfer):
    """Globus Transfer between the sites' collections.

    ``client``: a ``globus_sdk.TransferClient`` (built with :mod:`driver.globus_auth`
    if not given). Submitting a label that is still in flight (say, from a driver that
    was restarted) returns that transfer's id instead of starting another.
    """

    name = "globus"

    def __init__(self, sites: Mapping[str, Site], meta: MutableMapping[str, str] | None = None,
                 client=None):
        super().__init__(sites, meta)
        self._client = client

    @property
    def client(self):
        if self._client is None:
            from driver.globus_auth import transfer_client

            self._client = transfer_client()
        return self._client

    def _local(self, site: str) -> bool:
        return False

    def _collection(self, site: str) -> str:
        coll = self.site(site).collection
        if not coll:
            raise ConfigError(f"team.sites.{site}.collection", "no Globus collection for this site",
                              f"add collection = \"<collection id>\" under [sites.{site}]")
        return coll

    def _submit(self, src_site: str, dst_site: str, items: list[TransferItem], label: str) -> str:
        import globus_sdk

        for tid, rec in self.records().items():  # e.g. submitted before a driver restart
            if rec["label"] == label and rec["state"] == ACTIVE:
                return tid
        src_coll, dst_coll = self._collection(src_site), self._collection(dst_site)
        src_root, dst_root = self.site(src_site).root, self.site(dst_site).root
        where = f"transfer {label!r} from {src_site} to {dst_site}"
        subs = json.loads(self.meta.get(META_SUBMISSIONS) or "{}")
        with self._service_errors(where, (src_coll, dst_coll)):
            if label not in subs:  # persisted first: a resubmission cannot duplicate
                subs[label] = str(self.client.get_submission_id()["value"])
                self.meta[META_SUBMISSIONS] = json.dumps(subs, sort_keys=True)
            tdata = globus_sdk.TransferData(
                source_endpoint=src_coll, destination_endpoint=dst_coll, label=_LABEL_CHARS.sub("-", label)[:128],
                submission_id=subs[label], sync_level="checksum", verify_checksum=True)
            for it in items:
                src = str(safe_join(src_root, it.src, local=False))
                recursive = it.recursive
                if recursive is None:
                    recursive = self.client.operation_stat(src_coll, src)["type"] == "dir"
                tdata.add_item(src, str(safe_join(dst_root, it.dst, local=False)), recursive=recursive)
            response = self.client.submit_transfer(tdata)
        tid = str(response["task_id"])
        self._save(tid, label=label, src_site=src_site, dst_site=dst_site,
                   items=[[it.src, it.dst] for it in items], state=ACTIVE, detail="", submitted=time.time())
        subs = json.loads(self.meta.get(META_SUBMISSIONS) or "{}")
        subs.pop(label, None)
        self.meta[META_SUBMISSIONS] = json.dumps(subs, sort_keys=True)
        return tid

    def poll(self, transfer_id: str) -> TransferStatus:
        import globus_sdk

        rec = self.records().get(transfer_id, {})
        colls = tuple(self.sites[s].collection for s in (rec.get("src_site"), rec.get("dst_site"))
                      if s in self.sites and self.sites[s].collection)
        try:
            with self._service_errors(f"transfer {transfer_id}", colls, transfer_id):
                doc = self.client.get_task(transfer_id).data
        except TransferError as exc:
            cause = exc.__cause__
            if isinstance(cause, globus_sdk.GlobusAPIError) and cause.http_status == 404:
                return self._finish(transfer_id, TransferStatus(
                    FAILED, "the Transfer service has no record of this task; submit it again"))
            raise
        return self._finish(transfer_id, self._status(transfer_id, doc))

    @staticmethod
    def _status(tid: str, doc: Mapping[str, Any]) -> TransferStatus:
        state = str(doc.get("status", "")).upper()
        nice = doc.get("nice_status") or ""
        why = doc.get("nice_status_short_description") or doc.get("nice_status_details") or ""
        where = f"Globus transfer {tid} ({doc.get('label') or 'no label'})"
        if state == "SUCCEEDED":
            return TransferStatus(SUCCEEDED, f"{doc.get('files_transferred', 0)} files transferred "
                                  f"({doc.get('bytes_transferred', 0)} bytes), {doc.get('files_skipped', 0)} "
                                  "skipped; checksums verified")
        if state == "FAILED":
            fatal = doc.get("fatal_error") or {}
            code = fatal.get("code") or nice or "FAILED"
            text = fatal.get("description") or why or "no reason given by the service"
            hint = {"CANCELED": "it was cancelled; submit it again if still needed",
                    "DEADLINE_EXPIRED": "it ran past its deadline; submit it again",
                    "PERMISSION_DENIED": "your identity may not read the source or write the destination "
                                         "path; ask the collection's administrator"}.get(code, "")
            return TransferStatus(FAILED, f"{where}: {code}: {text}" + (f" ({hint})" if hint else ""))
        activity = f"https://app.globus.org/activity/{tid}"
        if state == "INACTIVE":
            colls = [doc.get(k) or f"<{k.split('_')[0]}>" for k in ("source_endpoint_id", "destination_endpoint_id")]
            raise TransferNeedsAction(
                f"{where} is INACTIVE ({nice or 'no status'}{': ' + why if why else ''}); it waits at the "
                "service until its credentials are renewed",
                f"run `remote-al login --collection {colls[0]} --collection {colls[1]}` (consent to the "
                f"collections' data_access scope), then resume the task at {activity}; the driver keeps "
                "watching it", tid)
        if doc.get("is_paused"):
            raise TransferNeedsAction(
                f"{where} is paused by a pause rule of a collection administrator ({nice or why})",
                f"ask the collection's administrator to lift the pause ({activity}); the driver keeps "
                "watching it", tid)
        detail = f"{doc.get('files_transferred', 0)}/{doc.get('files', '?')} files"
        if nice and nice not in ("OK", "Queued"):
            detail += f"; {nice}{': ' + why if why else ''} (Globus retries until the deadline)"
        elif nice:
            detail += f"; {nice}"
        return TransferStatus(ACTIVE, detail)

    @staticmethod
    @contextmanager
    def _service_errors(where: str, collections: Sequence[str], transfer_id: str | None = None):
        import globus_sdk
        from globus_sdk.token_storage import TokenValidationError

        try:
            yield
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as err:
            raise translate_error(err, where, collections, transfer_id) from err
        except TokenValidationError as err:  # no login, or tokens expired/insufficient
            raise TransferNeedsAction(f"{where}: no valid Globus login ({type(err).__name__}: {err})",
                                      "run `remote-al login` (or set REMOTE_AL_CLIENT_ID/SECRET)",
                                      transfer_id) from err


def translate_error(err: Exception, where: str, collections: Sequence[str] = (),
                    transfer_id: str | None = None) -> Exception:
    """A globus_sdk network or API error as the driver's error, by status and code."""
    import globus_sdk
    from globus_sdk.gare import to_gare

    if not isinstance(err, globus_sdk.GlobusAPIError):
        return BackendUnavailable(f"{where}: Globus Transfer unreachable ({type(err).__name__}): {err}")
    status, code = err.http_status, err.code or ""
    gare = to_gare(err)
    if code == "ConsentRequired" or (gare is not None and gare.code == "ConsentRequired"):
        scopes = list(gare.authorization_parameters.required_scopes or []) if gare else []
        scopes = scopes or list(err.info.consent_required.required_scopes or [])
        named = [m for s in scopes for m in _SCOPE_COLLECTION.findall(s)]
        return ConsentRequired(list(dict.fromkeys(named)) or list(collections), scopes, where, transfer_id)
    if status == 401 or gare is not None:
        return TransferNeedsAction(f"{where}: Globus refused the credentials ({status} {code}: {err.message})",
                                   "run `remote-al login` (or check REMOTE_AL_CLIENT_ID/SECRET), then run again",
                                   transfer_id)
    if status == 429 or status >= 500:
        return BackendUnavailable(f"{where}: Globus Transfer answered {status} {code}; retry later")
    if status == 403:
        return TransferNeedsAction(
            f"{where}: permission denied ({code}: {err.message})",
            f"ask the administrator of collection(s) {', '.join(collections) or '?'} for access to "
            "the site root, or check the team file's [sites] paths", transfer_id)
    if status == 404:
        return TransferError(f"{where}: not found ({code}: {err.message}); check the collection ids "
                             "and paths of the team file's [sites]")
    return TransferError(f"{where}: Globus Transfer refused the request ({status} {code}): {err.message}")


def make_transfer(kind: str, sites: Mapping[str, Site], meta: MutableMapping[str, str] | None = None,
                  **kwargs) -> Transfer:
    """``local`` or ``globus``, by name."""
    if kind == "local":
        return LocalTransfer(sites, meta, **kwargs)
    if kind == "globus":
        return GlobusTransfer(sites, meta, **kwargs)
    raise ConfigError("transfer", f"unknown transfer {kind!r}", "use 'local' or 'globus'")


__all__ = [
    "ACTIVE", "SUCCEEDED", "FAILED", "TransferStatus", "TransferItem", "Transfer", "LocalTransfer",
    "GlobusTransfer", "TransferError", "TransferFailed", "TransferNeedsAction", "ConsentRequired",
    "UnsafePath", "safe_join", "relative_to_root", "sha256_file", "wait_for",
    "make_transfer", "translate_error",
]
