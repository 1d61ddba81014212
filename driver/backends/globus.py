"""The Globus Compute backend: registered functions on the team's endpoints.

Decision: this backend drives the SDK's ``Client`` (``create_batch`` / ``batch_run``)
and polls task status over HTTPS, instead of wrapping ``globus_compute_sdk.Executor``:

- ``submit`` must hand back the task id (``backend_id``) and have the task group id in
  ``meta`` before it returns, so the loop can persist both first; the Executor assigns
  task ids later, on its own submitter thread.
- The Executor collects results over an AMQP connection that drops when a laptop sleeps;
  a poll (one ``batch_status`` request for every pending task) picks up whatever finished
  meanwhile, which is the resume story of the driver.
- A failed submission raises in the caller instead of stopping an Executor for good.
- Every exchange is an HTTP request, so tests use the real clients with
  ``globus_sdk.testing`` responses and no AMQP broker. Serialization, task documents and
  error translation are in ``driver.backends.globus_wire``.

As in the Executor: submission by registered function id, results serialized with
``JSONData`` (``result_serializers``), a task group per pool
(``meta["task_group_id:<pool>"]``, listed by ``Executor.reload_tasks`` too). Arguments go
as JSON (the endpoint templates refuse pickled ones); the driver deserializes nothing but
JSON, and refuses a result whose header is not JSON before reading it.

Auth: the SDK's own login, or the team's service identity with
``GLOBUS_COMPUTE_CLIENT_ID`` / ``GLOBUS_COMPUTE_CLIENT_SECRET`` (docs/sharing.md).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping, MutableMapping, Sequence

from driver.backends.base import FUNCTIONS, MAX_PAYLOAD_BYTES, Backend, Submission, resolve_future
from driver.backends.globus_wire import (Pending, as_json_ready, chunks_by_size, decode_result, is_uuid,
                                         json_import_path, json_serializer, task_failure, translate_error)
from driver.errors import BackendUnavailable, ConfigError, PayloadTooLarge, TaskFailed
from driver.team import TeamFile, read_team

log = logging.getLogger(__name__)

META_TASK_GROUP = "task_group_id:{pool}"
STATUS_BATCH = 128  # task ids per batch_status request (as the SDK does)


class GlobusBackend(Backend):
    """Run the registered functions on the team's Globus Compute endpoints.

    ``team``: the team file (path or ``TeamFile``): endpoint id per pool, function ids.
    ``meta``: a persisted dict-like of the campaign; the task group id of each pool is
    kept there. ``client``: a ``globus_compute_sdk.Client`` (built on ``start`` if not
    given; its serializer is set to JSON). ``poll_interval_s``: seconds between status
    polls. ``status_ttl_s``: how long an "online" endpoint status is trusted.
    """

    name = "globus"

    def __init__(
        self,
        team: str | Path | TeamFile,
        meta: MutableMapping[str, str] | None = None,
        client=None,
        *,
        poll_interval_s: float = 10.0,
        status_ttl_s: float = 60.0,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    ):
        self.team = team if isinstance(team, TeamFile) else read_team(team)
        self.meta: MutableMapping[str, str] = meta if meta is not None else {}
        self.poll_interval_s = poll_interval_s
        self.status_ttl_s = status_ttl_s
        self.max_payload_bytes = max_payload_bytes
        self.last_poll_error: Exception | None = None
        self.last_submit_error: Exception | None = None
        self._client = client
        self._status_client = None
        self._pending: dict[str, Pending] = {}
        self._online_until: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._client is None:
            self._client = self._connect()
        if self._status_client is None:
            self._client.fx_serializer = json_serializer()
            self._status_client = self._make_status_client(self._client)
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll_loop, name="globus-poll", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        """Stop polling. Tasks keep running remotely; their futures stay pending."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(1.0, self.poll_interval_s))
        self._thread = None

    def slots(self, pool: str) -> int:
        return self.team.slots_for(pool)

    def require_functions(self, names) -> None:
        self.team.require_functions(names)

    @staticmethod
    def _connect():
        import globus_sdk
        from globus_compute_sdk import Client

        try:
            return Client()
        except globus_sdk.NetworkError as err:
            raise BackendUnavailable(f"Globus Compute unreachable: {err}") from err

    @staticmethod
    def _make_status_client(client):
        """A ``ComputeClientV2`` with the client's credentials, for raw task documents.

        ``Client.get_batch_result`` drops failed tasks from its answer (it logs the
        remote exception instead), so status comes from the service's documents.
        """
        import globus_sdk

        auth = {"authorizer": client.authorizer} if client.authorizer else {"app": client.app}
        return globus_sdk.ComputeClientV2(base_url=client.web_service_address, **auth)

    # ---------------------------------------------------------------- submit
    def submit(self, pool: str, function: str, request, task_key: str) -> Submission:
        return self.submit_many(pool, [(function, request, task_key)])[0]

    def submit_many(self, pool: str, items: Sequence[tuple[str, Any, str]]) -> list[Submission]:
        """Submit ``(function, request, task_key)`` items to ``pool`` in few requests.

        Every payload is measured before any request; then tasks go in requests of at
        most ``max_payload_bytes`` each. If a request fails after earlier ones went
        through, the submissions made so far are returned (a shorter list, in item order)
        and the error is kept in ``last_submit_error``; if the first fails, it raises.
        """
        if not items:
            return []
        self.start()
        endpoint_id = self.team.endpoint_id(pool)
        serde = self._client.fx_serializer
        prepared = []
        for function, request, task_key in items:
            if function not in FUNCTIONS:
                raise ConfigError("function", f"unknown function {function!r}",
                                  f"one of {sorted(FUNCTIONS)}")
            function_id = self.team.function_id(function)
            args = (as_json_ready(request),)
            try:
                payload = serde.pack_buffers([serde.serialize(args), serde.serialize({})])
            except Exception as err:  # the SDK raises SerializationError
                raise TaskFailed(f"{function} request of {task_key} is not JSON-serializable: {err}",
                                 code="SerializationError", retryable=False) from err
            size = len(payload.encode())
            if size > self.max_payload_bytes:
                raise PayloadTooLarge(
                    f"{function} request of {task_key} is {size / 1e6:.1f} MB, over the "
                    f"{self.max_payload_bytes / 1e6:.0f} MB Globus Compute limit: keep data on "
                    "the endpoint's filesystem (move it with the transfer seam) and pass paths")
            prepared.append((function, task_key, function_id, args, size))

        self._require_online(pool, endpoint_id)
        submissions: list[Submission] = []
        self.last_submit_error = None
        for chunk in chunks_by_size(prepared, self.max_payload_bytes):
            try:
                submissions.extend(self._send(pool, endpoint_id, chunk))
            except Exception as err:
                if not submissions:
                    raise
                self.last_submit_error = err
                log.warning("%d of %d tasks submitted to %s; the rest failed: %s",
                            len(submissions), len(prepared), pool, err)
                break
        return submissions

    def _send(self, pool: str, endpoint_id: str, chunk) -> list[Submission]:
        key = META_TASK_GROUP.format(pool=pool)
        batch = self._client.create_batch(
            task_group_id=self.meta.get(key),
            user_endpoint_config=dict(self.team.user_endpoint_config.get(pool, {})) or None,
            result_serializers=[json_import_path()],
        )
        for _, _, function_id, args, _ in chunk:
            batch.add(function_id, args=args)
        with self._service_errors(pool, endpoint_id):
            response = self._client.batch_run(endpoint_id, batch)
        self.meta[key] = str(response["task_group_id"])
        # Task ids come per function id, in the order the tasks were added.
        ids_by_function = {str(uuid.UUID(fid)): list(tids) for fid, tids in response["tasks"].items()}
        submissions = []
        with self._lock:
            for function, task_key, function_id, _, _ in chunk:
                task_id = str(ids_by_function[str(uuid.UUID(function_id))].pop(0))
                fut: Future = Future()
                self._pending[task_id] = Pending(pool, function, task_key, fut)
                submissions.append(Submission(backend_id=task_id, future=fut))
        return submissions

    # -------------------------------------------------------------- endpoints
    def endpoint_status(self, pool: str) -> str:
        """``online``/``offline`` (as the service reports it) of the pool's endpoint."""
        self.start()
        endpoint_id = self.team.endpoint_id(pool)
        with self._service_errors(pool, endpoint_id):
            data = self._client.get_endpoint_status(endpoint_id)
        return str(data.get("status", "unknown")).lower()

    def allowed_functions(self, pool: str) -> set[str] | None:
        """Function ids the pool's endpoint allows, or None if it allows any."""
        self.start()
        endpoint_id = self.team.endpoint_id(pool)
        with self._service_errors(pool, endpoint_id):
            data = self._client.get_allowed_functions(endpoint_id)
        if not data.get("restricted", bool(data.get("functions"))):
            return None
        return {str(f) for f in data.get("functions", [])}

    def _require_online(self, pool: str, endpoint_id: str) -> None:
        if time.monotonic() < self._online_until.get(pool, 0.0):
            return
        status = self.endpoint_status(pool)
        if status == "offline":
            raise BackendUnavailable(
                f"the {pool} endpoint {endpoint_id} is offline; nothing was submitted and the "
                "tasks already sent wait at the service. Start it on the cluster: "
                "globus-compute-endpoint start <name>")
        self._online_until[pool] = time.monotonic() + self.status_ttl_s

    @contextmanager
    def _service_errors(self, pool: str, endpoint_id: str):
        import globus_sdk

        try:
            yield
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as err:
            raise translate_error(err, pool, endpoint_id) from err

    # -------------------------------------------------------------- reattach
    def reattach(self, pool: str, function: str, backend_id: str, task_key: str) -> Future | None:
        """Future of a task an earlier driver submitted; None if the service has no record.

        Raises ``BackendUnavailable`` when the service cannot be asked: then do not
        resubmit, try again later.
        """
        if not is_uuid(backend_id):
            return None
        self.start()
        import globus_sdk

        with self._lock:
            known = self._pending.get(backend_id)
        if known is not None:
            return known.future
        try:
            doc = self._status_client.get_task(backend_id).data
        except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as err:
            if isinstance(err, globus_sdk.GlobusAPIError) and err.http_status == 404:
                return None
            raise translate_error(err, pool, self.team.endpoints.get(pool, "?")) from err
        fut: Future = Future()
        entry = Pending(pool, function, task_key, fut)
        if not self._settle(backend_id, entry, doc):
            with self._lock:
                self._pending[backend_id] = entry
        return fut

    def reattach_many(self, items: Sequence[tuple[str, str, str, str]]) -> list[Future | None]:
        """``reattach`` for many ``(pool, function, backend_id, task_key)`` at once: one
        batch_status request per ``STATUS_BATCH`` task ids; a task the batch answer lacks
        is asked alone (404: None, resubmit)."""
        self.start()
        ids = [backend_id for _, _, backend_id, _ in items if is_uuid(backend_id)]
        docs: dict[str, Any] = {}
        for start in range(0, len(ids), STATUS_BATCH):
            with self._service_errors(items[0][0], self.team.endpoints.get(items[0][0], "?")):
                docs.update(self._status_client.get_task_batch(ids[start:start + STATUS_BATCH]).data.get("results", {}))
        out: list[Future | None] = []
        for pool, function, backend_id, task_key in items:
            with self._lock:
                known = self._pending.get(backend_id)
            doc = docs.get(backend_id)
            if known is not None or doc is None:
                out.append(known.future if known is not None else self.reattach(pool, function, backend_id, task_key))
                continue
            fut: Future = Future()
            entry = Pending(pool, function, task_key, fut)
            if not self._settle(backend_id, entry, doc):
                with self._lock:
                    self._pending[backend_id] = entry
            out.append(fut)
        return out

    # --------------------------------------------------------------- polling
    def pending(self) -> dict[str, str]:
        """``{task id: last status the service reported}`` of unfinished tasks."""
        with self._lock:
            return {tid: p.status for tid, p in self._pending.items()}

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.poll()
            except Exception:  # keep polling; the next round may succeed
                log.exception("status poll failed")

    def poll(self) -> int:
        """Ask the service about every pending task once; settle finished ones.

        Network or service errors leave the futures pending (``last_poll_error``).
        Returns how many futures were settled.
        """
        import globus_sdk

        if self._status_client is None:
            return 0
        with self._lock:
            task_ids = list(self._pending)
        settled = 0
        missing = []
        for start in range(0, len(task_ids), STATUS_BATCH):
            chunk = task_ids[start:start + STATUS_BATCH]
            try:
                results = self._status_client.get_task_batch(chunk).data.get("results", {})
            except (globus_sdk.GlobusAPIError, globus_sdk.NetworkError) as err:
                self.last_poll_error = err
                log.warning("Globus Compute status poll failed (tasks stay pending): %s", err)
                return settled
            for task_id in chunk:
                doc = results.get(task_id)
                if doc is None:
                    missing.append(task_id)
                else:
                    settled += self._settle_pending(task_id, doc)
        for task_id in missing:
            settled += self._check_missing(task_id)
        self.last_poll_error = None
        return settled

    def _settle_pending(self, task_id: str, doc: Mapping[str, Any]) -> int:
        with self._lock:
            entry = self._pending.get(task_id)
        if entry is None or not self._settle(task_id, entry, doc):
            return 0
        with self._lock:
            self._pending.pop(task_id, None)
        return 1

    def _check_missing(self, task_id: str) -> int:
        """A pending task absent from a status answer: ask for it alone."""
        import globus_sdk

        with self._lock:
            entry = self._pending.get(task_id)
        if entry is None:
            return 0
        try:
            doc = self._status_client.get_task(task_id).data
        except globus_sdk.GlobusAPIError as err:
            if err.http_status != 404:
                return 0
            with self._lock:
                self._pending.pop(task_id, None)
            resolve_future(entry.future, exc=TaskFailed(
                f"{entry.function} task {task_id} ({entry.task_key}): the service has no record of it",
                code="TaskLost", retryable=True))
            return 1
        except globus_sdk.NetworkError:
            return 0
        return self._settle_pending(task_id, doc)

    def _settle(self, task_id: str, entry: Pending, doc: Mapping[str, Any]) -> bool:
        """Resolve ``entry.future`` from a task document; False while it is pending."""
        status = str(doc.get("status", "unknown")).lower()
        entry.status = status
        if status not in ("success", "failed"):
            return False
        if status == "success":
            try:
                resolve_future(entry.future, result=decode_result(self._client.fx_serializer, task_id, entry, doc))
            except TaskFailed as err:
                resolve_future(entry.future, exc=err)
        else:
            resolve_future(entry.future, exc=task_failure(task_id, entry, doc, self.team.endpoints.get(entry.pool, "?")))
        return True
