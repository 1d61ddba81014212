"""Pools on another filesystem: request paths mapped to the site, datasets staged first."""

import json
import sqlite3
from pathlib import Path

import pytest

from driver.backends.local import LocalBackend
from driver.team import Site
from driver.campaign import Campaign
from driver.state import State, StateMeta
from driver.transfer_local import LocalTransfer

pytestmark = pytest.mark.slow


def test_campaign_with_the_gpu_pool_on_another_site(tmp_path):
    """The GPU pool sees only its own root: each generation's dataset is copied there
    (checksummed) before training, and every GPU task works under that root."""
    from test_campaign import mini_config

    cfg = mini_config(tmp_path, steering={"mode": "sync"})
    gpu_root = tmp_path / "gpu-site"
    gpu_root.mkdir()
    sites = {"gpu-site": Site(str(gpu_root), pools=("gpu",))}
    state = State(cfg.directory / "state.sqlite")
    transfer = LocalTransfer(sites, StateMeta(state))
    lines = []
    backend = LocalBackend(cfg.directory / "engine", gpu_slots=2, cpu_slots=1)
    reason = Campaign(cfg, backend, say=lines.append, status_every_s=30, sites=sites, transfer=transfer).run()
    assert reason == "round budget of 1 rounds reached"

    remote = gpu_root / cfg.directory.name
    db = sqlite3.connect(cfg.directory / "state.sqlite")
    db.row_factory = sqlite3.Row
    for g in (0, 1):  # both generations' datasets, staged
        local = cfg.directory / "datasets" / f"gen-{g:03d}"
        copied = sorted(p.relative_to(remote) for p in (remote / "datasets" / f"gen-{g:03d}").rglob("*.npy"))
        assert copied and copied == sorted(p.relative_to(cfg.directory) for p in local.rglob("*.npy"))
    for row in db.execute("SELECT function, pool, request FROM tasks"):
        req = json.loads(row["request"])
        where = Path(req["workdir"])
        if row["pool"] == "gpu":
            assert remote in where.parents, (row["function"], where)
            for s in req.get("systems", []):
                assert remote in Path(s).parents
        else:
            assert cfg.directory in where.parents
    models = [r[0] for r in db.execute("SELECT path FROM models")]
    assert models and all(remote in Path(p).parents and Path(p).exists() for p in models)
    assert not list((cfg.directory / "work").glob("train-*"))  # nothing trained on the driver's side
    staged = json.loads(db.execute("SELECT value FROM meta WHERE key='transfers'").fetchone()[0])
    assert len(staged) == 2 and all(t["state"] == "SUCCEEDED" for t in staged.values())
