"""The transfer seam: Globus Transfer against fake HTTP, local copies, path safety, pull.

The Globus tests drive the real ``globus_sdk.TransferClient``; only HTTP is fake:
``globus_sdk.testing``'s stock responses where they fit, and ``FakeTransferService``
(responses callbacks on the service's routes) where a test needs task state that
changes — so a test can finish, fail or pause a task "remotely" and watch the seam.
"""

from __future__ import annotations

import json
import os
import re
import stat
import uuid
from pathlib import Path

import globus_sdk
import pytest
import requests
import responses
from globus_sdk.testing import RegisteredResponse, get_last_request, load_response

from driver.team import Site
from driver.errors import BackendUnavailable, ConfigError
from driver.transfer import (
    ACTIVE,
    FAILED,
    SUCCEEDED,
    ConsentRequired,
    TransferError,
    TransferFailed,
    TransferItem,
    TransferNeedsAction,
    UnsafePath,
    relative_to_root,
    safe_join,
    sha256_file,
    wait_for,
)
from driver.transfer_globus import GlobusTransfer
from driver.transfer_local import LocalTransfer

pytestmark = pytest.mark.timeout(60)

SRC_COLL, DST_COLL = str(uuid.uuid4()), str(uuid.uuid4())
SITES = {"polaris": Site("/eagle/MYPROJ/remote-al", SRC_COLL), "laptop": Site("/~/remote-al", DST_COLL)}


def _url(path: str) -> str:
    return RegisteredResponse(service="transfer", path=path).full_url


class FakeTransferService:
    """What the Transfer service answers on the routes the seam uses."""

    def __init__(self, rsps: responses.RequestsMock):
        self.tasks: dict[str, dict] = {}  # task id -> task document
        self.submissions: dict[str, str] = {}  # submission id -> task id
        self.bodies: list[dict] = []  # accepted transfer documents
        self.kinds: dict[str, str] = {}  # path -> "dir" | "file" for stat
        self.refuse: tuple[int, dict] | None = None  # next submit answers this error
        self.fail_after_accept = False  # accept the task, then answer 502 (a lost reply)
        self.unreachable = False
        uid = r"[0-9a-f-]{36}"
        rsps.add_callback("GET", _url("/v0.10/submission_id"), self._submission_id,
                          content_type="application/json")
        rsps.add_callback("POST", _url("/v0.10/transfer"), self._submit, content_type="application/json")
        rsps.add_callback("GET", re.compile(_url(f"/v0.10/task/{uid}")), self._task,
                          content_type="application/json")
        rsps.add_callback("GET", re.compile(_url(f"/v0.10/operation/endpoint/{uid}/stat") + r".*"),
                          self._stat, content_type="application/json")

    def _connect(self):
        if self.unreachable:
            raise requests.ConnectionError("network is unreachable")

    def _submission_id(self, request):
        self._connect()
        return 200, {}, json.dumps({"value": str(uuid.uuid4())})

    def _submit(self, request):
        self._connect()
        body = json.loads(request.body)
        if self.refuse:
            status, doc = self.refuse
            self.refuse = None
            return status, {}, json.dumps({"request_id": "r1", "resource": "/transfer", **doc})
        sub = body["submission_id"]
        if sub in self.submissions:
            return 200, {}, json.dumps({"code": "Duplicate", "task_id": self.submissions[sub],
                                        "submission_id": sub, "message": "A transfer with id ... exists"})
        tid = str(uuid.uuid4())
        self.submissions[sub] = tid
        self.bodies.append(body)
        self.tasks[tid] = {"DATA_TYPE": "task", "task_id": tid, "type": "TRANSFER", "label": body.get("label"),
                           "source_endpoint_id": body["source_endpoint"],
                           "destination_endpoint_id": body["destination_endpoint"],
                           "status": "ACTIVE", "nice_status": "Queued", "is_paused": False,
                           "files": len(body["DATA"]), "files_transferred": 0, "bytes_transferred": 0,
                           "files_skipped": 0, "fatal_error": None}
        if self.fail_after_accept:
            self.fail_after_accept = False
            return 502, {}, json.dumps({"code": "BadGateway", "message": "upstream timed out"})
        return 202, {}, json.dumps({"DATA_TYPE": "transfer_result", "code": "Accepted", "task_id": tid,
                                    "submission_id": sub, "message": "accepted"})

    def _task(self, request):
        self._connect()
        tid = request.url.rsplit("/", 1)[-1]
        if tid not in self.tasks:
            return 404, {}, json.dumps({"code": "TaskNotFound", "message": f"Task {tid} not found"})
        return 200, {}, json.dumps(self.tasks[tid])

    def _stat(self, request):
        from urllib.parse import parse_qs, urlparse

        path = parse_qs(urlparse(request.url).query)["path"][0]
        return 200, {}, json.dumps({"DATA_TYPE": "file", "name": Path(path).name,
                                    "type": self.kinds.get(path, "file")})

    # -- what happens at the service
    def update(self, tid: str, **fields):
        self.tasks[tid].update(fields)


@pytest.fixture
def http():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


@pytest.fixture
def service(http):
    return FakeTransferService(http)


def new_client():
    client = globus_sdk.TransferClient(authorizer=globus_sdk.NullAuthorizer())
    client.retry_config.max_retries = 0  # no backoff sleeps in the tests
    return client


# ----------------------------------------------------------------- Globus submit
def test_submit_builds_a_checksummed_transfer_document(http):
    load_response(globus_sdk.TransferClient.get_submission_id, requests_mock=http)
    accepted = load_response(globus_sdk.TransferClient.submit_transfer, requests_mock=http)
    meta: dict[str, str] = {}
    seam = GlobusTransfer(SITES, meta, client=new_client())
    tid = seam.submit_items("polaris", "laptop", [
        TransferItem("linio2/datasets/gen-001", "pulled/datasets/gen-001", recursive=True),
        TransferItem("linio2/work/train-g1-m0/model.pth", "pulled/models/g1-m0.pth", recursive=False),
    ], label="linio2 gen-001: data+model")

    assert tid == accepted.metadata["task_id"]
    doc = json.loads(get_last_request(requests_mock=http).body)
    assert doc["source_endpoint"] == SRC_COLL and doc["destination_endpoint"] == DST_COLL
    assert doc["sync_level"] == 3 and doc["verify_checksum"] is True
    assert doc["submission_id"] == accepted.metadata["submission_id"]
    assert doc["label"] == "linio2 gen-001- data-model"  # characters Globus labels refuse
    assert [(i["source_path"], i["destination_path"], i["recursive"]) for i in doc["DATA"]] == [
        ("/eagle/MYPROJ/remote-al/linio2/datasets/gen-001", "/~/remote-al/pulled/datasets/gen-001", True),
        ("/eagle/MYPROJ/remote-al/linio2/work/train-g1-m0/model.pth", "/~/remote-al/pulled/models/g1-m0.pth",
         False)]
    assert seam.in_flight() == {tid: "linio2 gen-001: data+model"}
    assert json.loads(meta["transfers"])[tid]["src_site"] == "polaris"


def test_submit_then_poll_until_succeeded(service):
    service.kinds["/eagle/MYPROJ/remote-al/c1/datasets/gen-000"] = "dir"
    seam = GlobusTransfer(SITES, {}, client=new_client())
    tid = seam.submit("polaris", "c1/datasets/gen-000", "laptop", "c1/datasets/gen-000", label="c1 gen-000")
    assert service.bodies[0]["DATA"][0]["recursive"] is True  # looked up with operation_stat

    assert seam.poll(tid).state == ACTIVE and "Queued" in seam.poll(tid).detail
    steps = iter([dict(nice_status="OK", files_transferred=1),
                  dict(status="SUCCEEDED", nice_status=None, files_transferred=7, bytes_transferred=4096)])
    statuses = wait_for(seam, [tid], timeout_s=10, interval_s=0,
                        sleep=lambda s: service.update(tid, **next(steps)))
    assert statuses[tid].state == SUCCEEDED and "7 files" in statuses[tid].detail
    assert seam.in_flight() == {}
    assert seam.records()[tid]["state"] == SUCCEEDED


def test_failed_transfer_surfaces_its_reason(service):
    seam = GlobusTransfer(SITES, {}, client=new_client())
    tid = seam.submit("polaris", "c1/report", "laptop", "c1/report", label="c1 report", recursive=True)
    service.update(tid, status="FAILED", nice_status="PERMISSION_DENIED",
                   fatal_error={"code": "PERMISSION_DENIED", "description": "permission denied on /~/remote-al"})
    st = seam.poll(tid)
    assert st.state == FAILED and "permission denied on /~/remote-al" in st.detail
    assert "administrator" in st.detail
    with pytest.raises(TransferFailed, match="PERMISSION_DENIED"):
        wait_for(seam, [tid], timeout_s=1, interval_s=0)
    assert seam.records()[tid]["state"] == FAILED and seam.in_flight() == {}


def test_inactive_or_paused_transfer_says_what_to_do(service):
    seam = GlobusTransfer(SITES, {}, client=new_client())
    tid = seam.submit("polaris", "c1/models", "laptop", "c1/models", label="c1 models", recursive=True)
    service.update(tid, status="INACTIVE", nice_status="AUTH",
                   nice_status_short_description="credentials expired")
    with pytest.raises(TransferNeedsAction) as err:
        seam.poll(tid)
    assert "INACTIVE" in str(err.value) and "credentials expired" in str(err.value)
    assert f"remote-al login --collection {SRC_COLL} --collection {DST_COLL}" in err.value.fix
    assert f"activity/{tid}" in err.value.fix
    assert seam.in_flight() == {tid: "c1 models"}  # not finished: watched on

    service.update(tid, status="ACTIVE", is_paused=True, nice_status="PAUSED_BY_ADMIN")
    with pytest.raises(TransferNeedsAction, match="paused.*administrator"):
        seam.poll(tid)
    said = []
    steps = iter([dict(is_paused=False, nice_status="OK"), dict(status="SUCCEEDED")])
    out = wait_for(seam, [tid], timeout_s=10, interval_s=0, say=said.append,
                   sleep=lambda s: service.update(tid, **next(steps)))
    assert out[tid].state == SUCCEEDED and len(said) == 1 and "paused" in said[0]


@pytest.mark.parametrize("form", ["legacy", "gare"])
def test_consent_required_at_submission_names_the_collection(service, form):
    scope = (f"urn:globus:auth:scope:transfer.api.globus.org:all[*https://auth.globus.org/scopes/"
             f"{DST_COLL}/data_access]")
    if form == "legacy":
        doc = {"code": "ConsentRequired", "message": "Missing required data_access consent",
               "required_scopes": [scope]}
    else:
        doc = {"code": "ConsentRequired", "message": "Missing required data_access consent",
               "authorization_parameters": {"session_message": "consent needed", "required_scopes": [scope]}}
    service.refuse = (403, doc)
    meta: dict[str, str] = {}
    seam = GlobusTransfer(SITES, meta, client=new_client())
    with pytest.raises(ConsentRequired) as err:
        seam.submit("polaris", "c1/models", "laptop", "c1/models", label="c1 models", recursive=True)
    assert err.value.collections == [DST_COLL]
    assert f"remote-al login --collection {DST_COLL}" in str(err.value)
    assert "data_access" in str(err.value)
    assert seam.records() == {} and service.bodies == []

    # After consent the same label goes in, with the submission id fetched before.
    sub = json.loads(meta["transfer_submissions"])["c1 models"]
    tid = seam.submit("polaris", "c1/models", "laptop", "c1/models", label="c1 models", recursive=True)
    assert service.bodies[0]["submission_id"] == sub and service.submissions[sub] == tid
    assert json.loads(meta["transfer_submissions"]) == {}


def test_refused_credentials_say_to_log_in(service):
    service.refuse = (401, {"code": "AuthenticationFailed", "message": "Token is not active"})
    seam = GlobusTransfer(SITES, {}, client=new_client())
    with pytest.raises(TransferNeedsAction, match="remote-al login"):
        seam.submit("polaris", "c1/models", "laptop", "c1/models", label="x", recursive=True)


def test_a_restarted_driver_resumes_watching(service):
    meta: dict[str, str] = {}
    first = GlobusTransfer(SITES, meta, client=new_client())
    tid = first.submit("polaris", "c1/datasets", "laptop", "c1/datasets", label="c1 datasets", recursive=True)
    del first  # the driver dies; the transfer runs on

    second = GlobusTransfer(SITES, meta, client=new_client())  # new process, persisted meta
    assert second.in_flight() == {tid: "c1 datasets"}
    # The restarted loop submits the same step again: it gets the transfer in flight.
    assert second.submit("polaris", "c1/datasets", "laptop", "c1/datasets", label="c1 datasets",
                         recursive=True) == tid
    assert len(service.bodies) == 1
    assert second.poll(tid).state == ACTIVE
    service.update(tid, status="SUCCEEDED")
    assert second.poll(tid).state == SUCCEEDED and second.in_flight() == {}


def test_a_lost_reply_does_not_start_the_transfer_twice(service):
    """The service accepted the task but the reply was lost: resubmitting reuses the
    persisted submission id and the service answers with the first task."""
    meta: dict[str, str] = {}
    service.fail_after_accept = True
    with pytest.raises(BackendUnavailable, match="retry later"):
        GlobusTransfer(SITES, meta, client=new_client()).submit(
            "polaris", "c1/models", "laptop", "c1/models", label="c1 models", recursive=True)
    assert len(service.tasks) == 1 and "c1 models" in json.loads(meta["transfer_submissions"])
    tid = GlobusTransfer(SITES, meta, client=new_client()).submit(
        "polaris", "c1/models", "laptop", "c1/models", label="c1 models", recursive=True)
    assert list(service.tasks) == [tid]


def test_network_loss_and_unknown_tasks(service):
    seam = GlobusTransfer(SITES, {}, client=new_client())
    tid = seam.submit("polaris", "c1/models", "laptop", "c1/models", label="m", recursive=True)
    service.unreachable = True
    with pytest.raises(BackendUnavailable, match="unreachable"):
        seam.poll(tid)
    assert seam.in_flight() == {tid: "m"}  # nothing lost
    service.unreachable = False
    del service.tasks[tid]
    st = seam.poll(tid)
    assert st.state == FAILED and "no record" in st.detail


def test_sites_must_be_known_and_have_collections(service):
    seam = GlobusTransfer({**SITES, "scratch": Site("/scratch")}, {}, client=new_client())
    with pytest.raises(ConfigError, match=r"team.sites.nersc.*add \[sites.nersc\]"):
        seam.submit("nersc", "a", "laptop", "a", label="x")
    with pytest.raises(ConfigError, match="scratch.collection"):
        seam.submit("scratch", "a", "laptop", "a", label="x")


# ------------------------------------------------------------------ path safety
@pytest.mark.parametrize("bad", ["../other-project/data", "a/../../etc", "/etc/passwd", "~/x", "a\x00b"])
def test_safe_join_refuses_escapes(tmp_path, bad):
    with pytest.raises(UnsafePath):
        safe_join(tmp_path, bad)
    with pytest.raises(UnsafePath):
        safe_join("/eagle/P", bad, local=False)


def test_safe_join_follows_symlinks_only_inside_the_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "models").mkdir(parents=True)
    outside.mkdir()
    (root / "latest").symlink_to(root / "models")
    (root / "escape").symlink_to(outside)
    assert safe_join(root, "latest/m.pth") == root / "latest" / "m.pth"
    assert safe_join(root, "") == root
    with pytest.raises(UnsafePath, match="symlink"):
        safe_join(root, "escape/m.pth")
    assert relative_to_root(root, root / "models" / "m.pth") == "models/m.pth"
    with pytest.raises(UnsafePath, match="outside"):
        relative_to_root(root, outside / "m.pth")
    with pytest.raises(UnsafePath, match="outside"):
        relative_to_root("/eagle/P", "/home/me/m.pth", local=False)


def test_escaping_paths_are_refused_before_anything_moves(http, tmp_path):
    seam = GlobusTransfer(SITES, {}, client=new_client())
    with pytest.raises(UnsafePath):
        seam.submit("polaris", "../../home/secrets", "laptop", "x", label="x")
    with pytest.raises(UnsafePath):
        seam.submit("polaris", "c1/models", "laptop", "/etc/cron.d", label="x")
    assert len(http.calls) == 0

    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    (src / "data").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    (src / "data" / "ok.txt").write_text("fine")
    (src / "data" / "leak.txt").symlink_to(outside / "secret.txt")
    local = LocalTransfer({"src": Site(str(src)), "dst": Site(str(dst))}, {})
    with pytest.raises(UnsafePath, match="symlink"):
        local.submit("src", "data", "dst", "data", label="x")
    with pytest.raises(UnsafePath):
        local.submit("src", "data/ok.txt", "dst", "../ok.txt", label="x")
    assert not dst.exists() and local.records() == {}


# ------------------------------------------------------------------------ local
def make_tree(root: Path) -> None:
    (root / "c1" / "datasets" / "gen-000" / "deepmd" / "Li4Ni4O8" / "set.000").mkdir(parents=True)
    (root / "c1" / "datasets" / "gen-000" / "train.extxyz").write_text("16\nLattice=...\n" * 50)
    (root / "c1" / "datasets" / "gen-000" / "deepmd" / "Li4Ni4O8" / "set.000" / "energy.npy").write_bytes(
        os.urandom(3000))
    (root / "c1" / "model.pth").write_bytes(os.urandom(200_000))
    os.chmod(root / "c1" / "model.pth", 0o640)


def test_local_copy_is_verified_and_skips_unchanged_files(tmp_path):
    src, dst = tmp_path / "site", tmp_path / "laptop"
    make_tree(src)
    meta: dict[str, str] = {}
    seam = LocalTransfer({"site": Site(str(src)), "here": Site(str(dst))}, meta)
    tid = seam.submit_items("site", "here", [TransferItem("c1/datasets", "pulled/datasets"),
                                             TransferItem("c1/model.pth", "pulled/model.pth")], label="pull c1")
    st = seam.poll(tid)
    assert st.state == SUCCEEDED and "3 files copied" in st.detail
    for a, b in [("c1/model.pth", "pulled/model.pth"),
                 ("c1/datasets/gen-000/train.extxyz", "pulled/datasets/gen-000/train.extxyz"),
                 ("c1/datasets/gen-000/deepmd/Li4Ni4O8/set.000/energy.npy",
                  "pulled/datasets/gen-000/deepmd/Li4Ni4O8/set.000/energy.npy")]:
        assert sha256_file(src / a) == sha256_file(dst / b)
    assert stat.S_IMODE((dst / "pulled/model.pth").stat().st_mode) == 0o640
    again = seam.poll(seam.submit("site", "c1", "here", "pulled-again", label="pull c1 again"))
    assert again.state == SUCCEEDED
    tid2 = seam.submit("site", "c1/model.pth", "here", "pulled/model.pth", label="pull c1")
    assert "0 files copied" in seam.poll(tid2).detail and "1 unchanged" in seam.poll(tid2).detail
    assert LocalTransfer(seam.sites, meta).poll(tid).state == SUCCEEDED  # persisted in meta


def test_symlinks_inside_the_root_are_followed_and_loops_cut(tmp_path):
    src, dst = tmp_path / "site", tmp_path / "laptop"
    (src / "run" / "g1").mkdir(parents=True)
    (src / "run" / "g1" / "model.pth").write_bytes(b"weights")
    (src / "run" / "latest").symlink_to(src / "run" / "g1")  # inside the root: followed
    (src / "run" / "g1" / "up").symlink_to(src / "run")  # a loop: not walked again
    seam = LocalTransfer({"site": Site(str(src)), "here": Site(str(dst))}, {})
    assert seam.poll(seam.submit("site", "run", "here", "run", label="r")).state == SUCCEEDED
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file()) == [
        "run/g1/model.pth", "run/latest/model.pth"]


def _no_partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".part-" in p.name]


def test_an_interrupted_copy_leaves_no_partial_file(tmp_path):
    src, dst = tmp_path / "site", tmp_path / "laptop"
    make_tree(src)
    (dst / "pulled").mkdir(parents=True)
    (dst / "pulled" / "model.pth").write_bytes(b"the previous model")

    def dies_half_way(a: Path, b: Path) -> None:
        data = a.read_bytes()
        b.write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    seam = LocalTransfer({"site": Site(str(src)), "here": Site(str(dst))}, {}, copy_file=dies_half_way)
    st = seam.poll(seam.submit("site", "c1/model.pth", "here", "pulled/model.pth", label="m"))
    assert st.state == FAILED and "No space left" in st.detail
    assert (dst / "pulled" / "model.pth").read_bytes() == b"the previous model"  # untouched
    st = seam.poll(seam.submit("site", "c1/datasets", "here", "pulled/datasets", label="d"))
    assert st.state == FAILED
    assert not any(p.is_file() for p in (dst / "pulled" / "datasets").rglob("*"))
    assert _no_partials(dst) == []


def test_a_corrupted_copy_fails_verification(tmp_path):
    src, dst = tmp_path / "site", tmp_path / "laptop"
    make_tree(src)

    def flips_a_byte(a: Path, b: Path) -> None:
        data = bytearray(a.read_bytes())
        data[1000] ^= 0xFF
        b.write_bytes(bytes(data))

    seam = LocalTransfer({"site": Site(str(src)), "here": Site(str(dst))}, {}, copy_file=flips_a_byte)
    st = seam.poll(seam.submit("site", "c1/model.pth", "here", "model.pth", label="m"))
    assert st.state == FAILED and "checksum mismatch" in st.detail
    assert not (dst / "model.pth").exists() and _no_partials(dst) == []


def test_a_killed_copy_is_reported_and_leaves_nothing_partial(tmp_path):
    src, dst = tmp_path / "site", tmp_path / "laptop"
    make_tree(src)

    def interrupted(a: Path, b: Path) -> None:
        b.write_bytes(a.read_bytes()[:10])
        raise KeyboardInterrupt

    meta: dict[str, str] = {}
    seam = LocalTransfer({"site": Site(str(src)), "here": Site(str(dst))}, meta, copy_file=interrupted)
    with pytest.raises(KeyboardInterrupt):
        seam.submit("site", "c1/model.pth", "here", "model.pth", label="m")
    assert not (dst / "model.pth").exists() and _no_partials(dst) == []
    # A leftover temporary file of a kill -9 is removed by the next copy of that file.
    (dst / ".model.pth.part-deadbeef").write_bytes(b"half")
    restarted = LocalTransfer(seam.sites, meta)
    (tid,) = restarted.in_flight()
    st = restarted.poll(tid)
    assert st.state == FAILED and "interrupted" in st.detail
    assert restarted.poll(restarted.submit("site", "c1/model.pth", "here", "model.pth", label="m")).state == SUCCEEDED
    assert _no_partials(dst) == [] and sha256_file(dst / "model.pth") == sha256_file(src / "c1/model.pth")


def test_missing_source_fails_clearly(tmp_path):
    seam = LocalTransfer({"a": Site(str(tmp_path / "a")), "b": Site(str(tmp_path / "b"))}, {})
    with pytest.raises(TransferError, match="does not exist"):
        seam.submit("a", "nothing-here", "b", "x", label="x")


# ------------------------------------------------------------------------- pull
def test_pull_copies_models_datasets_and_reports(tmp_path, monkeypatch):
    import argparse
    import time

    from driver.cli import main
    from driver.state import State

    camp = tmp_path / "campaigns" / "c1"
    make_tree(camp.parent)  # camp/model.pth, camp/datasets/gen-000/...
    (camp / "report").mkdir()
    (camp / "report" / "status.png").write_bytes(os.urandom(500))
    (camp / "model.ckpt.pt").write_bytes(os.urandom(100))
    (camp / "lcurve.out").write_text("# step rmse_e_trn\n0 1.0\n")
    st = State(camp / "state.sqlite")
    with st.transaction():
        st.db.execute("INSERT INTO models VALUES(0,0,'train:g0:m0',?,?,?,'{}',10,1.0,?)",
                      (str(camp / "model.pth"), str(camp / "model.ckpt.pt"), str(camp / "lcurve.out"), time.time()))
        st.db.execute("INSERT INTO datasets VALUES(0,?,'[]','[]',10,?)",
                      (str(camp / "datasets" / "gen-000"), time.time()))
    out = tmp_path / "laptop"
    assert main(["pull", str(camp), "--to", str(out)]) == 0
    for rel in ("model.pth", "model.ckpt.pt", "lcurve.out", "report/status.png",
                "datasets/gen-000/deepmd/Li4Ni4O8/set.000/energy.npy"):
        assert sha256_file(out / rel) == sha256_file(camp / rel)
    record = json.loads((out / "pull.json").read_text())
    assert "files copied" in record["detail"]

    # A recorded path outside the campaign directory is refused, nothing copied.
    with st.transaction():
        st.db.execute("UPDATE models SET path=?", (str(tmp_path / "elsewhere.pth"),))
    (tmp_path / "elsewhere.pth").write_bytes(b"x")
    from driver.transfer_cli import cmd_pull

    args = argparse.Namespace(campaign=str(camp), to=str(tmp_path / "second"), what="models,datasets,reports",
                              team=None, from_site=None, to_site=None, timeout=3600.0)
    with pytest.raises(UnsafePath, match="outside"):
        cmd_pull(args)
    assert not any((tmp_path / "second").iterdir())
    st.close()


# ------------------------------------------------------------------------- auth
def test_token_file_is_kept_private(tmp_path):
    from driver.globus_auth import AuthError, secure_token_file

    path = tmp_path / "cfg" / "tokens.json"
    assert secure_token_file(path) == path and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.write_text("{}")
    os.chmod(path, 0o644)
    secure_token_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    os.chmod(path, 0o640)
    with pytest.raises(AuthError, match="chmod 600"):
        secure_token_file(path, fix=False)
    link = tmp_path / "cfg" / "link.json"
    link.symlink_to(path)
    with pytest.raises(AuthError, match="symlink"):
        secure_token_file(link)


def test_apps_for_the_user_and_the_service_identity(tmp_path):
    from driver.globus_auth import AuthError, make_app, service_credentials, transfer_client

    tokens = tmp_path / "tokens.json"
    user = make_app(env={"REMOTE_AL_TOKEN_FILE": str(tokens)})
    assert isinstance(user, globus_sdk.UserApp)
    cid = str(uuid.uuid4())
    env = {"REMOTE_AL_TOKEN_FILE": str(tokens), "GLOBUS_COMPUTE_CLIENT_ID": cid,
           "GLOBUS_COMPUTE_CLIENT_SECRET": "s3cret"}
    service = make_app(env=env)
    assert isinstance(service, globus_sdk.ClientApp) and service.client_id == cid
    own = str(uuid.uuid4())
    assert service_credentials({**env, "REMOTE_AL_CLIENT_ID": own, "REMOTE_AL_CLIENT_SECRET": "x"}) == (own, "x")
    with pytest.raises(AuthError, match="REMOTE_AL_CLIENT_ID is not"):
        service_credentials({"REMOTE_AL_CLIENT_SECRET": "x"})

    client = transfer_client([SRC_COLL], app=user)
    assert isinstance(client, globus_sdk.TransferClient)
    scopes = [str(s) for s in user.scope_requirements[globus_sdk.TransferClient.resource_server]]
    assert any(f"{SRC_COLL}/data_access" in s for s in scopes)


# ------------------------------------------------------------ staging in the loop
def test_staging_to_a_remote_site_waits_for_globus_and_resumes(service, tmp_path):
    """A training task's dataset goes from the laptop to the GPU site through Globus; the
    task is ready only after SUCCEEDED; a restarted driver keeps the same transfer."""
    from driver.placement import Placement

    camp = tmp_path / "c1"
    (camp / "datasets" / "gen-000" / "LiNiO2").mkdir(parents=True)
    sites = {"laptop": Site(str(tmp_path), DST_COLL, pools=("driver",)),
             "polaris": Site("/eagle/MYPROJ/remote-al", SRC_COLL, pools=("gpu",))}
    meta: dict[str, str] = {}
    place = Placement(camp, sites, GlobusTransfer(sites, meta, client=new_client()), meta=meta)
    req, stage = place.translate("gpu", {"workdir": str(camp / "work" / "train-g0-m0"),
                                         "systems": [str(camp / "datasets" / "gen-000" / "LiNiO2")]})
    assert req["workdir"] == "/eagle/MYPROJ/remote-al/c1/work/train-g0-m0"
    assert req["systems"] == ["/eagle/MYPROJ/remote-al/c1/datasets/gen-000/LiNiO2"]
    assert stage == ["datasets/gen-000/LiNiO2"]
    # the CPU pool is on no site: it shares the driver's filesystem, nothing changes
    assert place.translate("cpu", {"workdir": str(camp / "work" / "x")}) == ({"workdir": str(camp / "work" / "x")}, [])

    assert place.ready("gpu", stage) is False  # submitted, ACTIVE
    (body,) = service.bodies
    assert body["source_endpoint"] == DST_COLL and body["destination_endpoint"] == SRC_COLL
    item = body["DATA"][0]
    assert (item["source_path"], item["destination_path"], item["recursive"]) == (
        f"{tmp_path}/c1/datasets/gen-000/LiNiO2", "/eagle/MYPROJ/remote-al/c1/datasets/gen-000/LiNiO2", True)
    (tid,) = place.in_flight().values()

    again = Placement(camp, sites, GlobusTransfer(sites, meta, client=new_client()), meta=meta)  # restart
    assert again.ready("gpu", stage) is False and len(service.bodies) == 1  # watched, not resubmitted
    service.update(tid, status="SUCCEEDED", nice_status=None)
    assert again.ready("gpu", stage) is True


def test_failed_staging_fails_the_wait_with_the_reason(service, tmp_path):
    from driver.placement import Placement, StagingFailed

    camp = tmp_path / "c2"
    (camp / "datasets").mkdir(parents=True)
    sites = {"laptop": Site(str(tmp_path), DST_COLL, pools=("driver",)),
             "polaris": Site("/eagle/MYPROJ/remote-al", SRC_COLL, pools=("gpu",))}
    meta: dict[str, str] = {}
    place = Placement(camp, sites, GlobusTransfer(sites, meta, client=new_client()), meta=meta)
    assert place.ready("gpu", ["datasets"]) is False
    (tid,) = place.in_flight().values()
    service.update(tid, status="FAILED", nice_status="PERMISSION_DENIED", fatal_error={
        "code": "PERMISSION_DENIED", "description": "no write access to /eagle/MYPROJ"})
    with pytest.raises(StagingFailed, match="datasets"):
        place.ready("gpu", ["datasets"])
    assert place.in_flight() == {}  # a retry starts a fresh transfer


def test_driver_site_must_hold_the_campaign(tmp_path):
    from driver.placement import Placement

    sites = {"laptop": Site(str(tmp_path / "elsewhere"), DST_COLL, pools=("driver",))}
    with pytest.raises(ConfigError, match="campaign's parent"):
        Placement(tmp_path / "c3", sites, LocalTransfer(sites))
    two = {"a": Site(str(tmp_path), pools=("gpu",)), "b": Site(str(tmp_path), pools=("gpu",))}
    with pytest.raises(ConfigError, match="also on site"):
        Placement(tmp_path / "c3", two, LocalTransfer(two))
    with pytest.raises(ConfigError, match="no transfer"):
        Placement(tmp_path / "c3", {"g": Site(str(tmp_path / "g"), pools=("gpu",))})


def test_run_reads_the_team_sites_for_staging(tmp_path):
    """`remote-al run --team` with sites that place pools: the campaign gets them and a
    transfer of the backend's kind; without pools nothing is staged."""
    import argparse

    from driver.cli import _sites_for
    from driver.config import parse_config

    cfg = parse_config({"campaign": {"name": "c4", "type_map": ["Li", "Ni", "O"]},
                        "structures": [{"name": "L"}]}, base_dir=tmp_path)
    team = tmp_path / "team.toml"
    team.write_text(f'format = 1\n[sites.gpu-scratch]\nroot = "{tmp_path / "gpu"}"\npools = ["gpu"]\n')
    args = argparse.Namespace(team=str(team), backend=None)
    sites, transfer = _sites_for(cfg, args)
    assert sites["gpu-scratch"].pools == ("gpu",) and isinstance(transfer, LocalTransfer)
    team.write_text(f'format = 1\n[sites.store]\nroot = "{tmp_path / "gpu"}"\n')
    assert _sites_for(cfg, args) == (None, None)
    team.write_text('format = 1\n[sites.x]\nroot = "/a"\npools = "gpu"\n')
    with pytest.raises(ConfigError, match="pools"):
        _sites_for(cfg, args)
