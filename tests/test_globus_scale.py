"""A thousand tasks in flight on the Globus Compute backend: the engine submits each
pool's tasks in one ``submit_many`` call and the backend polls them in batches, so the
number of HTTP requests per tick stays a handful whatever the number of tasks (against
the web service stand-in of tests/test_globus_backend.py: the real SDK, fake HTTP)."""

from __future__ import annotations

import math

import pytest

from driver.backends.globus import STATUS_BATCH, GlobusBackend
from driver.campaign import Campaign
from driver.campaign import requests as rq
from driver.campaign.plan import AddStructure, AddTask
from driver.config import load_config
from driver.dataset import frame_hash
from driver.preflight import build_structure
from remote_al.simulated import label_structures
from remote_al.structures import composition_label, to_extxyz
from test_durability import write_campaign
from test_globus_backend import FakeCompute, new_client

N = 1000


@pytest.fixture
def service():
    import responses

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeCompute(rsps)


def calls(service, path: str) -> int:
    return sum(1 for c in service.rsps.calls if c.request.url.endswith(path))


def test_a_thousand_tasks_take_a_few_requests_per_tick(service, tmp_path, monkeypatch):
    import uuid

    from driver.backends.base import FUNCTIONS
    from driver.team import TeamFile

    monkeypatch.setenv("REMOTE_AL_SIM_UNIT_S", "0")
    team = TeamFile(endpoints={"gpu": str(uuid.uuid4()), "cpu": str(uuid.uuid4())},
                    functions={name: str(uuid.uuid4()) for name in FUNCTIONS}, slots={"gpu": N, "cpu": N})
    cfg = load_config(write_campaign(tmp_path, labeler={"batch_size": 1}))
    backend = GlobusBackend(team, meta={}, client=new_client(), poll_interval_s=3600)  # polled by hand here
    camp = Campaign(cfg, backend, say=lambda m: None)
    camp.state.set_meta("phase", "label")
    base = build_structure(cfg.structures[0])
    frames = []
    for i in range(N):
        a = base.copy()
        a.positions[0, 0] += 0.001 * (i + 1)
        frames.append(a)
    camp.applier.apply([AddStructure(dict(
        hash=frame_hash(a), origin="initial", split="train", round=0, generation=-1, spec=cfg.structures[0].name,
        composition=composition_label(a), natoms=len(a), extxyz=to_extxyz(a), status="selected")) for a in frames])
    camp.applier.apply([AddTask(s) for s in rq.labels(camp.view, 0, camp.view.structures(status="selected"))])
    backend.start()
    try:
        camp._submit()
        assert len(camp.inflight) == N
        assert 1 <= len(service.submits) <= 2  # one batch (split only by the 10 MB payload limit)
        assert len(camp.state.tasks(status="submitted")) == N  # every backend id stored
        # a driver restarted with all of them in flight reattaches in batches too
        again_backend = GlobusBackend(team, meta={}, client=new_client(), poll_interval_s=3600)
        again = Campaign(cfg, again_backend, say=lambda m: None)
        before = calls(service, "/v2/batch_status")
        again._reattach()
        assert len(again.inflight) == N
        assert calls(service, "/v2/batch_status") - before == math.ceil(N / STATUS_BATCH)
        assert not [c for c in service.rsps.calls if "/v2/tasks/" in c.request.url]  # none asked alone
        again_backend.shutdown()
        again.state.close()
        for tid in list(service.tasks):  # the endpoint runs them
            (request,), _ = service.args(tid)
            service.finish(tid, label_structures(request))
        before = calls(service, "/v2/batch_status")
        assert backend.poll() == N
        assert calls(service, "/v2/batch_status") - before == math.ceil(N / STATUS_BATCH)
        camp._collect(timeout=0)
        assert not camp.inflight and camp.state.label_count("ok") == N
    finally:
        backend.shutdown()
