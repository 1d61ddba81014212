"""The Globus Compute backend against a stand-in for the web service at the HTTP level.

The SDK's real ``Client`` and ``globus_sdk.ComputeClientV2`` talk to ``responses``
(``globus_sdk.testing``): ``FakeCompute`` keeps task state in dicts and answers the
service's routes (submit, batch_status, tasks/<id>, endpoint status, allow-list), so
a test can finish or fail tasks "remotely" and watch the driver collect them.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from concurrent.futures import wait

import globus_sdk
import pytest
import requests
import responses
from globus_compute_sdk import Client
from globus_compute_sdk.serialize import ComputeSerializer, DillCode, DillDataBase64, JSONData
from globus_sdk.testing import RegisteredResponse, load_response

from driver.backends import make_backend
from driver.backends.base import FUNCTIONS, MAX_PAYLOAD_BYTES
from driver.backends.globus import GlobusBackend
from driver.doctor import doctor
from driver.team import TeamFile, driver_environment, write_team
from driver.errors import BackendUnavailable, FunctionNotAllowed, PayloadTooLarge, TaskFailed
from remote_al.records import MDRequest

pytestmark = pytest.mark.timeout(60)

JSON_ONLY = ComputeSerializer(allowed_deserializer_types=[JSONData, DillCode])


def _url(path: str) -> str:
    return RegisteredResponse(service="compute", path=path).full_url


class FakeCompute:
    """What the Globus Compute web service answers, for the routes the backend uses."""

    def __init__(self, rsps: responses.RequestsMock):
        self.rsps = rsps
        self.status: dict[str, str] = {}  # endpoint id -> "online"/"offline"
        self.allowlists: dict[str, list[str] | None] = {}
        self.refused_functions: set[str] = set()  # submit answers 403 FUNCTION_NOT_PERMITTED
        self.tasks: dict[str, dict] = {}  # task id -> document the service keeps
        self.payloads: dict[str, str] = {}  # task id -> packed args/kwargs as sent
        self.submits: list[dict] = []  # request bodies of submit calls
        self.on_submit = None  # optional hook(task_id, endpoint_id, function_id, args)
        self.unreachable = False  # every route fails at the connection
        self.submits_before_outage: int | None = None  # then unreachable
        uid = r"[0-9a-f-]{36}"
        rsps.add_callback("POST", re.compile(_url(f"/v3/endpoints/{uid}/submit")), self._submit,
                          content_type="application/json")
        rsps.add_callback("POST", _url("/v2/batch_status"), self._batch_status,
                          content_type="application/json")
        rsps.add_callback("GET", re.compile(_url(f"/v2/tasks/{uid}")), self._get_task,
                          content_type="application/json")
        rsps.add_callback("GET", re.compile(_url(f"/v2/endpoints/{uid}/status")), self._status,
                          content_type="application/json")
        rsps.add_callback("GET", re.compile(_url(f"/v3/endpoints/{uid}/allowed_functions")),
                          self._allowlist, content_type="application/json")

    # -- routes
    def _connect(self):
        if self.unreachable:
            raise requests.ConnectionError("network is unreachable")

    def _submit(self, request):
        if self.submits_before_outage is not None and len(self.submits) >= self.submits_before_outage:
            self.unreachable = True
        self._connect()
        endpoint_id = request.url.split("/")[-2]
        body = json.loads(request.body)
        self.submits.append(body)
        for fid in body["tasks"]:
            if fid in self.refused_functions:
                return 403, {}, json.dumps({"code": "FUNCTION_NOT_PERMITTED", "message":
                                            f"Function {fid} not permitted on endpoint {endpoint_id}"})
        group = body.get("task_group_id") or str(uuid.uuid4())
        tasks = {}
        for fid, payloads in body["tasks"].items():
            tasks[fid] = []
            for payload in payloads:
                tid = str(uuid.uuid4())
                tasks[fid].append(tid)
                self.tasks[tid] = {"task_id": tid, "status": "waiting-for-ep"}
                self.payloads[tid] = payload
                if self.on_submit:
                    self.on_submit(tid, endpoint_id, fid, self.args(tid))
        return 200, {}, json.dumps({"request_id": str(uuid.uuid4()), "task_group_id": group,
                                    "endpoint_id": endpoint_id, "tasks": tasks})

    def _batch_status(self, request):
        self._connect()
        ids = json.loads(request.body)["task_ids"]
        results = {tid: self.tasks[tid] for tid in ids if tid in self.tasks}
        return 200, {}, json.dumps({"response": "batch", "results": results})

    def _get_task(self, request):
        self._connect()
        tid = request.url.rsplit("/", 1)[-1]
        if tid not in self.tasks:
            return 404, {}, json.dumps({"code": "TASK_NOT_FOUND", "message": f"Task {tid} not found"})
        return 200, {}, json.dumps(self.tasks[tid])

    def _status(self, request):
        self._connect()
        eid = request.url.split("/")[-2]
        return 200, {}, json.dumps({"status": self.status.get(eid, "online"), "details": {}})

    def _allowlist(self, request):
        self._connect()
        eid = request.url.split("/")[-2]
        functions = self.allowlists.get(eid)
        return 200, {}, json.dumps({"endpoint_id": eid, "restricted": functions is not None,
                                    "functions": functions or []})

    # -- what happens on the endpoint
    def args(self, tid: str):
        """The task's arguments, read as JSON only (as the endpoint templates require)."""
        ser_args, ser_kwargs = JSON_ONLY.unpack_buffers(self.payloads[tid])
        return JSON_ONLY.deserialize(ser_args), JSON_ONLY.deserialize(ser_kwargs)

    def finish(self, tid: str, result: dict, serializer=JSONData()):
        self.tasks[tid] = {"task_id": tid, "status": "success", "result": serializer.serialize(result),
                           "completion_t": str(time.time()), "details": {"python_version": "3.11.7"}}

    def fail(self, tid: str, exception: str, **extra):
        self.tasks[tid] = {"task_id": tid, "status": "failed", "exception": exception,
                           "completion_t": str(time.time()), **extra}


@pytest.fixture
def http():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def service(http):
    return FakeCompute(http)


@pytest.fixture
def team():
    return TeamFile(endpoints={"gpu": str(uuid.uuid4()), "cpu": str(uuid.uuid4())},
                    functions={name: str(uuid.uuid4()) for name in FUNCTIONS})


def new_client():
    return Client(authorizer=globus_sdk.NullAuthorizer(), do_version_check=False)


@pytest.fixture
def backends(team):
    made = []

    def make(meta, client=None, **kw):
        backend = GlobusBackend(team, meta=meta, client=client or new_client(),
                                poll_interval_s=0.02, **kw)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.shutdown()


def md_request(key: str, size: int = 0) -> MDRequest:
    return MDRequest(task_key=key, workdir=f"/eagle/P/runs/{key}", model_path="/eagle/P/m0.pth",
                     structure_extxyz="X" * size or "2\n\nLi 0 0 0\nO 0 0 1.9\n")


def test_make_backend_builds_it_from_a_team_file(http, team, tmp_path):
    # globus-sdk's stock "all" version document names min_endpoint_version; the
    # compute SDK reads min_ep_version: serve the document the compute SDK reads.
    stock = load_response(globus_sdk.ComputeClientV2.get_version, case="all", requests_mock=http)
    RegisteredResponse(service="compute", path="/v2/version", json={
        **stock.json, "min_ep_version": stock.json["min_endpoint_version"]}).replace(requests_mock=http)
    path = write_team(team, tmp_path / "team.toml")
    client = Client(authorizer=globus_sdk.NullAuthorizer())  # with the service version check
    backend = make_backend("globus", team=path, meta={}, client=client)
    assert isinstance(backend, GlobusBackend) and backend.team == team
    assert backend.slots("gpu") == 4 and backend.slots("cpu") == 1


def test_batch_submission_persists_ids_and_collects_json_results(service, team, backends):
    meta: dict[str, str] = {}
    backend = backends(meta)
    requests = [("md", md_request("md-1"), "md-1"), ("uq", {"task_key": "uq-1", "frames": 3}, "uq-1"),
                ("md", md_request("md-2"), "md-2")]
    subs = backend.submit_many("gpu", requests)

    assert len(service.submits) == 1  # one request for the batch
    body = service.submits[0]
    assert body["result_serializers"] == ["globus_compute_sdk.serialize.concretes.JSONData"]
    assert "task_group_id" not in body
    assert sorted(len(v) for v in body["tasks"].values()) == [1, 2]
    assert set(meta) == {"task_group_id:gpu"} and uuid.UUID(meta["task_group_id:gpu"])
    assert {s.backend_id for s in subs} == set(service.tasks)
    # Each submission got the id of its own task (ids come grouped per function).
    assert [service.args(s.backend_id)[0][0]["task_key"] for s in subs] == ["md-1", "uq-1", "md-2"]
    # Arguments are JSON: the records arrive as their dicts.
    args, kwargs = service.args(subs[0].backend_id)
    assert MDRequest.from_dict(args[0]) == requests[0][1] and kwargs == {}
    assert service.args(subs[1].backend_id)[0] == [{"task_key": "uq-1", "frames": 3}]

    for i, sub in enumerate(subs):
        service.finish(sub.backend_id, {"task_key": requests[i][2], "n": i})
    assert [s.future.result(timeout=5) for s in subs] == [
        {"task_key": "md-1", "n": 0}, {"task_key": "uq-1", "n": 1}, {"task_key": "md-2", "n": 2}]

    # Later submissions of the pool join the same task group.
    group = meta["task_group_id:gpu"]
    backend.submit("gpu", "train", {"task_key": "t"}, "t")
    assert service.submits[-1]["task_group_id"] == group
    backend.submit("cpu", "label", {"task_key": "l"}, "l")
    assert meta["task_group_id:cpu"] != group


def test_restarted_driver_reattaches_and_collects(service, team, backends):
    meta: dict[str, str] = {}
    first = backends(meta)
    done, running = first.submit_many("gpu", [("md", md_request("a"), "a"), ("md", md_request("b"), "b")])
    group = meta["task_group_id:gpu"]
    del first  # the driver dies; the tasks run on
    service.finish(done.backend_id, {"task_key": "a", "frames": 10})

    second = backends(meta)  # a new process: new backend and client, the persisted meta
    fut_done = second.reattach("gpu", "md", done.backend_id, "a")
    assert fut_done.done() and fut_done.result() == {"task_key": "a", "frames": 10}
    fut_running = second.reattach("gpu", "md", running.backend_id, "b")
    assert not fut_running.done()
    assert second.pending() == {running.backend_id: "waiting-for-ep"}
    service.finish(running.backend_id, {"task_key": "b", "frames": 7})
    assert fut_running.result(timeout=5) == {"task_key": "b", "frames": 7}

    # No record at the service (or not a Globus id): the loop may resubmit.
    assert second.reattach("gpu", "md", str(uuid.uuid4()), "c") is None
    assert second.reattach("gpu", "md", "local-17", "c") is None
    second.submit("gpu", "md", md_request("c"), "c")
    assert service.submits[-1]["task_group_id"] == group


@pytest.mark.parametrize("error_details", [{"code": "FUNCTION_NOT_ALLOWED"}, None])
def test_function_not_allowed_result(service, team, backends, error_details):
    backend = backends({})
    sub = backend.submit("cpu", "label", {"task_key": "l"}, "l")
    eid, fid = team.endpoints["cpu"], team.functions["label"]
    message = f"Function {fid} not permitted on endpoint {eid}"
    extra = {"details": {"fid": fid, "eid": eid}}
    if error_details:
        extra["error_details"] = {**error_details, "user_message": message}
    service.fail(sub.backend_id, message, **extra)
    err = sub.future.exception(timeout=5)
    assert isinstance(err, FunctionNotAllowed) and not err.retryable
    assert eid in str(err) and "remote-al endpoint render" in str(err)


def test_function_refused_at_submission(service, team, backends):
    service.refused_functions.add(team.functions["train"])
    with pytest.raises(FunctionNotAllowed, match="--team team.toml"):
        backends({}).submit("gpu", "train", {"task_key": "t"}, "t")


def test_oversized_payload_is_refused_before_any_request(http, backends):
    backend = backends({})
    with pytest.raises(PayloadTooLarge) as err:
        backend.submit("gpu", "md", md_request("big", size=MAX_PAYLOAD_BYTES + 1), "big")
    assert len(http.calls) == 0
    assert "10.0 MB" in str(err.value) and "pass paths" in str(err.value)
    assert not err.value.retryable


def test_large_batches_are_split_by_size(service, backends):
    backend = backends({}, max_payload_bytes=3000)
    items = [("md", md_request(f"m{i}", size=900), f"m{i}") for i in range(4)]
    subs = backend.submit_many("gpu", items)
    assert len(service.submits) == 2 and len({s.backend_id for s in subs}) == 4


def test_a_failed_later_request_returns_what_was_submitted(service, backends):
    client = new_client()
    client._compute_web_client.v3.retry_config.max_retries = 0  # no backoff sleeps in the test
    backend = backends({}, client=client, max_payload_bytes=3000)
    service.submits_before_outage = 1
    items = [("md", md_request(f"m{i}", size=900), f"m{i}") for i in range(4)]
    subs = backend.submit_many("gpu", items)
    assert len(subs) == 2 and isinstance(backend.last_submit_error, BackendUnavailable)
    assert [service.args(s.backend_id)[0][0]["task_key"] for s in subs] == ["m0", "m1"]


def test_offline_endpoint_is_unavailable_and_queued_work_survives(service, team, backends):
    backend = backends({}, status_ttl_s=0)
    queued = backend.submit("cpu", "label", {"task_key": "l1"}, "l1")
    service.status[team.endpoints["cpu"]] = "offline"

    with pytest.raises(BackendUnavailable, match="offline.*globus-compute-endpoint start"):
        backend.submit("cpu", "label", {"task_key": "l2"}, "l2")
    assert len(service.submits) == 1  # nothing was sent
    time.sleep(0.1)
    assert not queued.future.done() and queued.backend_id in backend.pending()

    service.status[team.endpoints["cpu"]] = "online"
    service.finish(queued.backend_id, {"task_key": "l1"})
    assert queued.future.result(timeout=5) == {"task_key": "l1"}
    backend.submit("cpu", "label", {"task_key": "l2"}, "l2")
    assert len(service.submits) == 2


def test_network_loss_is_unavailable_and_queued_work_survives(service, backends):
    client = new_client()
    for web in (client._compute_web_client.v2, client._compute_web_client.v3):
        web.retry_config.max_retries = 0  # no backoff sleeps in the test
    backend = backends({}, client=client, status_ttl_s=0)
    queued = backend.submit("gpu", "md", md_request("a"), "a")
    backend._status_client.retry_config.max_retries = 0
    service.unreachable = True
    with pytest.raises(BackendUnavailable, match="unreachable"):
        backend.submit("gpu", "md", md_request("b"), "b")
    restarted = backends({}, client=client)
    restarted.start()
    restarted._status_client.retry_config.max_retries = 0
    with pytest.raises(BackendUnavailable):  # not None: the loop must not resubmit
        restarted.reattach("gpu", "md", queued.backend_id, "a")
    time.sleep(0.1)
    assert isinstance(backend.last_poll_error, globus_sdk.NetworkError) and not queued.future.done()
    service.unreachable = False
    service.finish(queued.backend_id, {"task_key": "a"})
    assert queued.future.result(timeout=5) == {"task_key": "a"}


def test_service_errors_while_polling_keep_tasks_pending(http, service, backends):
    backend = backends({})
    sub = backend.submit("gpu", "md", md_request("a"), "a")
    backend.shutdown()  # poll by hand below
    backend._status_client.retry_config.max_retries = 0  # no backoff sleeps in the test
    http.replace("POST", _url("/v2/batch_status"), status=503, json={"code": "UNAVAILABLE"})
    assert backend.poll() == 0
    assert isinstance(backend.last_poll_error, globus_sdk.GlobusAPIError) and not sub.future.done()
    http.replace("POST", _url("/v2/batch_status"), json={"response": "batch", "results": {}})
    service.finish(sub.backend_id, {"task_key": "a"})  # answered through tasks/<id>
    assert backend.poll() == 1 and sub.future.result() == {"task_key": "a"}


def test_remote_exception_is_a_retryable_task_failure(service, backends):
    backend = backends({})
    sub = backend.submit("gpu", "train", {"task_key": "t"}, "t")
    service.fail(sub.backend_id, "Traceback ...\nRuntimeError: CUDA out of memory",
                 error_details={"code": "RemoteExecutionError", "user_message": "CUDA oom"})
    err = sub.future.exception(timeout=5)
    assert type(err) is TaskFailed and err.retryable and "CUDA out of memory" in str(err)


def test_pickled_result_is_refused_unread(service, backends):
    backend = backends({})
    sub = backend.submit("gpu", "uq", {"task_key": "u"}, "u")
    service.finish(sub.backend_id, {"task_key": "u"}, serializer=DillDataBase64())
    err = sub.future.exception(timeout=5)
    assert isinstance(err, TaskFailed) and err.code == "ResultNotJSON" and not err.retryable


def test_task_lost_by_the_service(service, backends):
    backend = backends({})
    sub = backend.submit("gpu", "md", md_request("a"), "a")
    del service.tasks[sub.backend_id]
    err = sub.future.exception(timeout=5)
    assert isinstance(err, TaskFailed) and err.code == "TaskLost" and err.retryable


def test_doctor_runs_the_probe_on_each_endpoint(service, team, backends):
    env = driver_environment()
    reports = {  # what probe_environment answers on each endpoint
        team.endpoints["gpu"]: {**env, "deepmd_kit": "3.2.0", "gpus": []},
        team.endpoints["cpu"]: {**env, "deepmd_kit": "3.2.0", "gpus": [], "python_minor": "3.10"},
    }

    def run_probe(tid, endpoint_id, function_id, args):
        assert function_id == team.functions["probe"] and args == ([{}], {})
        service.finish(tid, reports[endpoint_id])

    service.on_submit = run_probe
    service.allowlists[team.endpoints["gpu"]] = sorted(team.functions.values())
    service.allowlists[team.endpoints["cpu"]] = [team.functions["label"], team.functions["probe"]]

    findings = doctor(team, backend=backends({}), timeout_s=10, driver=env)
    by = {(f.pool, f.check): f for f in findings}
    assert by[("gpu", "gpus")].level == "error" and "available_accelerators" in by[("gpu", "gpus")].fix
    assert by[("cpu", "python")].level == "error" and "3.10" in by[("cpu", "python")].message
    assert by[("gpu", "python")].level == "ok" and by[("gpu", "endpoint-status")].level == "ok"
    assert by[("gpu", "allowed-functions")].level == "ok"
    assert by[("cpu", "allowed-functions")].level == "warning"
    assert ("cpu", "gpus") not in by


def test_doctor_reports_an_offline_endpoint(service, team, backends):
    service.status[team.endpoints["cpu"]] = "offline"
    service.on_submit = lambda tid, eid, fid, args: service.finish(
        tid, {**driver_environment(), "gpus": ["A100"], "deepmd_kit": "3.2.0"})
    findings = doctor(team, backend=backends({}), timeout_s=10)
    offline = [f for f in findings if f.pool == "cpu"]
    assert [(f.check, f.level) for f in offline] == [("endpoint-status", "error")]
    assert "globus-compute-endpoint start" in offline[0].fix
    assert not [f for f in findings if f.pool == "gpu" and f.level == "error"]


def test_shutdown_leaves_remote_tasks_for_a_later_reattach(service, backends):
    meta: dict[str, str] = {}
    backend = backends(meta)
    sub = backend.submit("gpu", "md", md_request("a"), "a")
    backend.shutdown()
    service.finish(sub.backend_id, {"task_key": "a"})
    wait([sub.future], timeout=0.2)
    assert not sub.future.done()  # nobody polls any more
    assert backends(meta).reattach("gpu", "md", sub.backend_id, "a").result(timeout=5) == {"task_key": "a"}
