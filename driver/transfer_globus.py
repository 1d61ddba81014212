"""Globus transfers: a Globus Transfer task between two sites' collections
(``sync_level="checksum"``, ``verify_checksum=True``), behind the transfer seam
(``driver.transfer``). A submission id is fetched and persisted first, so resubmitting
after a crash cannot start the same transfer twice.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager
from typing import Any, Mapping, MutableMapping, Sequence

from driver.errors import BackendUnavailable, ConfigError
from driver.team import Site
from driver.transfer import (
    ACTIVE,
    FAILED,
    META_SUBMISSIONS,
    SUCCEEDED,
    ConsentRequired,
    Transfer,
    TransferError,
    TransferItem,
    TransferNeedsAction,
    TransferStatus,
    safe_join,
)

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
