"""The colmena backend: the registered functions as Colmena methods on a real Colmena task
server (``ParslTaskServer`` with local HighThroughputExecutors), the simulated workload
for whole campaigns; Colmena ``Result`` records mapped to result dicts or ``TaskFailed``;
and the ``GlobusComputeTaskServer`` adapter against the real Globus Compute SDK client
with the web service faked at the HTTP level (``globus_sdk.testing``, as
tests/test_globus_backend.py does).
"""

from __future__ import annotations

import os
import sqlite3
import time
import uuid
from pathlib import Path

import globus_sdk
import pytest

pytest.importorskip("colmena", reason="the colmena backend needs the colmena extra: pip install -e '.[colmena]'")

from colmena.models import FailureInformation, Result  # noqa: E402
from colmena.queue.python import PipeQueues  # noqa: E402
from colmena.task_server.globus import GlobusComputeTaskServer  # noqa: E402
from globus_compute_sdk import Executor  # noqa: E402
from test_durability import (  # noqa: E402
    check_invariants,
    kill_at_points_then_resume,
    kill_at_random_moments_then_resume,
    sim_env,
    write_campaign,
)
from test_globus_backend import FakeCompute, _url, new_client  # noqa: E402

from driver.backends import make_backend  # noqa: E402
from driver.backends.colmena import TOPICS, ColmenaBackend, result_value  # noqa: E402
from driver.backends.colmena_servers import GlobusComputeTaskServerAdapter  # noqa: E402
from driver.campaign import Campaign  # noqa: E402
from driver.config import load_config  # noqa: E402
from driver.errors import BackendUnavailable, PayloadTooLarge, TaskFailed  # noqa: E402
from remote_al.records import LabelRequest, TrainRequest  # noqa: E402
from remote_al.simulated import FUNCTIONS as SIM_FUNCTIONS  # noqa: E402


# ------------------------------------------------------------ Result -> result dict
def _result(value=None, exc: BaseException | None = None, method: str = "train", serialization="json") -> Result:
    res = Result(inputs=(({"task_key": "k"},), {}), method=method, serialization_method=serialization)
    res.serialize()
    if exc is not None:
        res.set_result(None)
        res.success = False
        res.failure_info = FailureInformation.from_exception(exc)
    else:
        res.set_result(value)
    res.serialize()
    res.deserialize()
    return res


def test_a_successful_result_is_its_dict():
    assert result_value(_result({"model_path": "/m.pth", "wall_s": 1.0}), "train", "train:g0:m0") == {
        "model_path": "/m.pth", "wall_s": 1.0}


def test_a_failed_result_is_a_retryable_task_failure_with_the_remote_traceback():
    def deep():
        raise RuntimeError("dp train exited with status 1")

    try:
        deep()
    except RuntimeError as exc:
        res = _result(exc=exc)
    with pytest.raises(TaskFailed) as err:
        result_value(res, "train", "train:g0:m0")
    assert err.value.retryable and err.value.code == "RemoteExecutionError"
    assert "train:g0:m0" in str(err.value) and "dp train exited" in str(err.value) and "in deep" in str(err.value)


@pytest.mark.parametrize("value", [[1, 2], "text", None])
def test_a_result_that_is_no_dict_is_not_retried(value):
    with pytest.raises(TaskFailed) as err:
        result_value(_result(value), "md", "md:r1")
    assert not err.value.retryable and err.value.code == "ResultNotJSON"


def test_a_pickled_result_is_refused():
    with pytest.raises(TaskFailed) as err:
        result_value(_result({"a": 1}, serialization="pickle"), "md", "md:r1")
    assert not err.value.retryable and err.value.code == "ResultNotJSON"


def test_topics_per_pool_and_make_backend(tmp_path):
    backend = make_backend("colmena", run_dir=tmp_path, gpu_slots=3, cpu_slots=5, functions=SIM_FUNCTIONS)
    assert isinstance(backend, ColmenaBackend)
    assert TOPICS == {"gpu": ("md", "uq", "train", "relax"), "cpu": ("label", "relax_label", "md_label")}
    assert backend.served() == {"md": "gpu", "uq": "gpu", "train": "gpu", "label": "cpu"}  # no relax in the sim
    assert backend.slots("gpu") == 3 and backend.slots("cpu") == 5
    with pytest.raises(BackendUnavailable):
        backend.submit("gpu", "md", {}, "md:1")  # not started
    with pytest.raises(ValueError):
        backend.submit("cpu", "md", {}, "md:1")  # md runs on the GPU pool
    with pytest.raises(ValueError):
        make_backend("colmena", run_dir=tmp_path, server="globus")  # no endpoints


# -------------------------------------------------- the Globus Compute adapter
@pytest.fixture
def http():
    import responses

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def _sim_train(key: str):
    return TrainRequest(key, "/w", ("/sys",), ("Li",), 0, 1)


def test_globus_compute_task_server_adapter_builds_the_executor_the_sdk_accepts(http):
    service = FakeCompute(http)
    function_id = str(uuid.uuid4())
    http.add("POST", _url("/v3/functions"), json={"function_uuid": function_id})
    # The service refuses the function at submission: results come over AMQP, which is not
    # faked here, so the test follows the task to the service's answer and no further.
    service.refused_functions.add(function_id)
    endpoint = str(uuid.uuid4())
    from remote_al.simulated import train_member

    queues = PipeQueues(["train"], serialization_method="json", keep_inputs=False)
    client = new_client()
    # Colmena 0.7's own server registers the method, then cannot build its executor.
    stock = GlobusComputeTaskServer({train_member: endpoint}, funcx_client=client, queues=queues)
    with pytest.raises(TypeError, match="funcx_client"):
        stock._setup()

    server = GlobusComputeTaskServerAdapter({train_member: endpoint}, funcx_client=client, queues=queues,
                                            batch_size=16)
    assert server.registered_funcs == {"train_member": (function_id, endpoint)}
    registration = [c.request for c in http.calls if c.request.url.endswith("/v3/functions")]
    assert len(registration) == 2  # one per server, by the real client
    server._setup()
    try:
        assert isinstance(server.fx_exec, Executor)
        assert server.fx_exec.client is client and server.fx_exec.batch_size == 16
        task = Result(inputs=((_sim_train("train:g0:m0").to_dict(),), {}), method="train_member",
                      serialization_method="json")
        task.serialize()
        future = server._submit(task, "train")
        deadline = time.monotonic() + 20
        while not service.submits and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(service.submits) == 1, "the executor sent no task to the service"
        (body,) = service.submits
        assert list(body["tasks"]) == [function_id]
        submit_url = [c.request.url for c in http.calls if c.request.url.endswith("/submit")][0]
        assert f"/v3/endpoints/{endpoint}/submit" in submit_url
        with pytest.raises(globus_sdk.GlobusAPIError) as err:  # the service's answer reached the future
            future.result(timeout=20)
        assert err.value.http_status == 403 and err.value.code == "FUNCTION_NOT_PERMITTED"
    finally:
        server._cleanup()


# ------------------------------------------------ campaigns on a ParslTaskServer
def _orphans(marker: str) -> list[int]:
    """Live processes other than this one whose command line or open files mention
    ``marker`` (a run directory): the task server, its interchanges and worker pools all
    keep a log file there (an interchange overwrites its command line and environment)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            text = (proc / "cmdline").read_bytes().decode(errors="replace")
            text += " ".join(os.readlink(fd) for fd in (proc / "fd").iterdir())
        except OSError:
            continue
        if marker in text:
            found.append(int(proc.name))
    return found


def _no_orphans(marker: str, wait_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + wait_s
    while (left := _orphans(marker)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.mark.slow
def test_a_short_campaign_runs_on_a_parsl_task_server(tmp_path, monkeypatch):
    for key, value in sim_env(tmp_path).items():
        if key.startswith("REMOTE_AL_SIM"):
            monkeypatch.setenv(key, value)
    toml = write_campaign(tmp_path)
    cfg = load_config(toml)
    run_dir = cfg.directory / "engine-colmena"
    backend = ColmenaBackend(run_dir, cfg.backend.gpu_slots, cfg.backend.cpu_slots, functions=SIM_FUNCTIONS)
    reason = Campaign(cfg, backend, say=lambda m: None, status_every_s=5).run()
    assert reason.startswith("round budget")
    stats = check_invariants(cfg.directory, tmp_path / "exec-log")
    assert stats["re_executions"] == 0
    db = sqlite3.connect(cfg.directory / "state.sqlite")
    ids = [r[0] for r in db.execute("SELECT backend_id FROM tasks")]
    assert ids and all(uuid.UUID(i) for i in ids)  # Colmena task ids
    assert not list((run_dir / "spool").glob("*.json"))  # every result recorded, then forgotten
    backend.shutdown()
    assert not _no_orphans(str(run_dir))


@pytest.mark.slow
def test_payload_over_the_limit_is_refused_before_sending(tmp_path):
    backend = ColmenaBackend(tmp_path / "run", 1, 1, functions=SIM_FUNCTIONS)
    backend.start()
    try:
        with pytest.raises(PayloadTooLarge):
            backend.submit("gpu", "train", {"task_key": "x", "blob": "x" * 11_000_000}, "train:big")
        fut = backend.submit("gpu", "train", {"task_key": "oops"}, "train:bad").future
        with pytest.raises(TaskFailed) as err:  # the function raised on the worker: retryable
            fut.result(timeout=120)
        assert err.value.retryable and "train:bad" in str(err.value)
    finally:
        backend.shutdown()


@pytest.mark.slow
def test_sigkill_at_named_points_then_resume_on_colmena(tmp_path):
    toml = write_campaign(tmp_path, campaign={"seed": 7})
    points = ["after_submit:3", "before_record:4", "in_record:5", "after_record:7", "after_export:2"]
    kill_at_points_then_resume(toml, sim_env(tmp_path), points, min_kills=4, backend="colmena")
    # every task server, interchange and worker pool ended with its driver
    assert not _no_orphans(str(tmp_path / "camp" / "engine-colmena"))


@pytest.fixture
def redis_url(tmp_path):
    import shutil
    import socket
    import subprocess

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("no redis-server on PATH: the RedisQueues path is not tested here")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_redis_queues_carry_the_tasks_when_a_redis_url_is_given(tmp_path, redis_url, monkeypatch):
    monkeypatch.setenv("REMOTE_AL_SIM_UNIT_S", "0")
    backend = ColmenaBackend(tmp_path / "run", 1, 1, functions=SIM_FUNCTIONS, redis_url=redis_url)
    backend.start()
    try:
        assert type(backend._queues).__name__ == "RedisQueues"
        subs = [backend.submit("gpu", "train", _sim_train(f"train:g0:m{i}").to_dict(), f"train:g0:m{i}")
                for i in range(3)]
        results = [s.future.result(timeout=180) for s in subs]
        assert [r["task_key"] for r in results] == ["train:g0:m0", "train:g0:m1", "train:g0:m2"]
        assert backend.reattach("gpu", "train", "gone", "train:g0:m1").result() == results[1]  # spooled
    finally:
        backend.shutdown()


@pytest.mark.slow
def test_a_task_server_that_dies_fails_its_tasks_and_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("REMOTE_AL_SIM_UNIT_S", "1")  # a training task sleeps 60 s
    backend = ColmenaBackend(tmp_path / "run", 1, 1, functions=SIM_FUNCTIONS, restart_every_s=0)
    backend.start()
    try:
        first = backend._server
        running = backend.submit("gpu", "train", _sim_train("train:g0:m0").to_dict(), "train:g0:m0").future
        time.sleep(2)
        first.kill()  # SIGKILL: no cleanup in the task server
        with pytest.raises(TaskFailed) as err:
            running.result(timeout=30)
        assert err.value.code == "TaskServerLost" and err.value.retryable
        label = backend.submit("cpu", "label", LabelRequest("l", str(tmp_path), "chgnet", (), "").to_dict(), "label:0")
        assert backend._server is not first and backend._server.is_alive()
        assert label.future.result(timeout=180)["labels"] == []
    finally:
        backend.shutdown()
    # the dead server's interchanges end with its process group, its workers when they miss
    # the interchange's heartbeats
    assert not _no_orphans(str(tmp_path / "run"), wait_s=60)


@pytest.mark.slow
def test_sigkill_from_outside_at_random_moments_on_colmena(tmp_path):
    import random

    toml = write_campaign(tmp_path, campaign={"seed": 11})
    # moments spread over start-up (7-20 s here) and the first rounds; a slower simulated
    # workload than elsewhere (0.1 s a unit: about a minute of work), so that a resumed run
    # cannot finish the whole campaign inside one waiting time and leave too few kills
    env = sim_env(tmp_path, REMOTE_AL_SIM_UNIT_S="0.1")
    kill_at_random_moments_then_resume(toml, env, random.Random(24), 5, (5.0, 15.0), backend="colmena")
    assert not _no_orphans(str(tmp_path / "camp" / "engine-colmena"))
