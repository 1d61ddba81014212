"""The label journal (remote_al.label_journal): a label task killed part-way and run again
with the same request repeats no finished calculation. Real labelers throughout: the task
runs in a subprocess that is SIGKILLed after its first journal entry appears and before
its last, then runs again; GPAW's run files and a spy on CHGNet's label() show what was
computed again, and the labels equal those of an uninterrupted run in another workdir."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from ase.build import bulk  # noqa: E402

from remote_al.functions import label_structures  # noqa: E402
from remote_al.label_journal import LabelJournal, _digest, label_key  # noqa: E402
from remote_al.labelers.chgnet import CHGNetLabeler  # noqa: E402
from remote_al.records import Label, LabelRequest  # noqa: E402
from remote_al.structures import cathode_cell, from_extxyz, perturb, to_extxyz  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

try:
    import gpaw  # noqa: F401

    HAVE_GPAW, WHY = True, "gpaw is importable"
except ImportError as exc:
    HAVE_GPAW, WHY = False, f"gpaw is not importable ({exc}); install it with scripts/install_gpaw.sh"

# 2-atom bcc Li cells, rattled (forces not zero): about 1 s a single point on one core here.
GPAW_TINY = {"ecut": 200, "kpts": [3, 3, 3], "hubbard_u": {}}


def lithium_cells(n: int) -> list:
    cells = []
    for seed in range(n):
        atoms = bulk("Li", "bcc", a=3.44, cubic=True)
        atoms.rattle(0.05, seed=seed)
        cells.append(atoms)
    return cells


def cathode_frames(n: int, supercell=(1, 1, 1), seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [perturb(cathode_cell(1.0, supercell=supercell), 0.05, 0.02, rng) for _ in range(n)]


def request(workdir: Path, labeler: str, frames, ids=None, settings=None) -> LabelRequest:
    ids = tuple(range(len(frames))) if ids is None else tuple(ids)
    return LabelRequest(f"label-{workdir.name}", str(workdir), labeler, ids, to_extxyz(frames), dict(settings or {}))


def entries(workdir: Path) -> dict[int, Path]:
    return {int(p.stem): p for p in sorted((workdir / "labels").glob("*.json"))}


# The task as an endpoint worker runs it, with the labeler's label() wrapped to log when it
# starts on each structure (the labeler itself is the real one).
TASK = """
import importlib, json, sys, time
from remote_al.labelers.base import LABELERS
from remote_al.functions import label_structures
req, log = json.load(open(sys.argv[1])), sys.argv[2]
module, name = LABELERS[req["labeler"]].split(":")
cls = getattr(importlib.import_module(module), name)
real = cls.label
def label(self, structures, structure_ids, workdir):
    with open(log, "a") as fh:
        fh.writelines(f"{sid} {time.time_ns()}\\n" for sid in structure_ids)
    return real(self, structures, structure_ids, workdir)
cls.label = label
label_structures(req)
"""


def kill_after_first_entry(req: LabelRequest, tmp_path: Path, timeout_s: float = 180) -> dict[int, Path]:
    """Run the task in a subprocess and SIGKILL it as soon as its first journal entry is
    there; the entries left behind: at least one, not all, and each written before the
    next structure's calculation started."""
    workdir = Path(req.workdir)
    spec, log, err = (tmp_path / f"{workdir.name}-{name}" for name in ("request.json", "starts.txt", "stderr.txt"))
    spec.write_text(json.dumps(req.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", TASK, str(spec), str(log)], env=env,
                                stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.time() + timeout_s
        try:
            while not entries(workdir):
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the task ended (rc {proc.returncode}) or hung before its first journal entry: "
                                + err.read_text()[-2000:])
                time.sleep(0.005)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    kept = entries(workdir)
    assert 1 <= len(kept) < len(req.structure_ids), f"killed with {len(kept)} of {len(req.structure_ids)} done"
    assert not (workdir / "labeled.extxyz").exists()  # the task never got to its end
    started = {int(sid): int(t) for sid, t in (line.split() for line in log.read_text().splitlines())}
    ids = list(req.structure_ids)
    for done, following in zip(ids, ids[1:]):
        if following in started:  # the label of `done` was kept before `following` started
            assert done in kept and kept[done].stat().st_mtime_ns <= started[following], (done, following)
    return kept


def plain(value):
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


def mtimes(paths) -> dict:
    return {p: p.stat().st_mtime_ns for p in paths}


def assert_same_labels(got: list[dict], want: list[dict], tol: float = 1e-6):
    assert [(l["structure_id"], l["status"]) for l in got] == [(l["structure_id"], l["status"]) for l in want]
    for g, w in zip(got, want):
        if w["status"] == "ok":
            assert g["energy"] == pytest.approx(w["energy"], abs=tol)
            np.testing.assert_allclose(g["forces"], w["forces"], atol=tol)


# ------------------------------------------------------------------ kill / resume
@pytest.mark.gpaw
@pytest.mark.skipif(not HAVE_GPAW, reason=WHY)
def test_gpaw_batch_killed_midway_repeats_no_finished_calculation(tmp_path):
    frames = lithium_cells(3)
    req = request(tmp_path / "killed", "gpaw", frames, ids=(10, 11, 12), settings=GPAW_TINY)
    kept = kill_after_first_entry(req, tmp_path)
    workdir = Path(req.workdir)
    done = {sid: workdir / str(sid) / "gpaw.txt" for sid in kept}
    before = mtimes([*done.values(), *kept.values()])
    killed_at = time.time_ns()

    result = label_structures(req)

    assert result["reused"] == len(kept)
    assert mtimes(before) == before  # neither the run files nor the entries of finished structures were touched
    for sid in set(req.structure_ids) - set(kept):
        assert (workdir / str(sid) / "gpaw.txt").stat().st_mtime_ns > killed_at  # these ran now
    assert set(entries(workdir)) == set(req.structure_ids)
    for sid, path in kept.items():  # a reused label is the kept one, bit for bit
        assert json.loads(path.read_text())["label"] == plain(result["labels"][sid - 10])
    frames_out = from_extxyz((workdir / "labeled.extxyz").read_text())
    assert [a.info["structure_id"] for a in frames_out] == [10, 11, 12]

    fresh = label_structures(request(tmp_path / "uninterrupted", "gpaw", frames, ids=(10, 11, 12),
                                     settings=GPAW_TINY))
    assert fresh["reused"] == 0
    assert [l["status"] for l in fresh["labels"]] == ["ok"] * 3
    assert_same_labels(result["labels"], fresh["labels"])


@pytest.mark.gpaw
@pytest.mark.skipif(not HAVE_GPAW, reason=WHY)
def test_gpaw_scf_failure_is_kept_and_not_repeated(tmp_path):
    settings = {**GPAW_TINY, "maxiter": 2, "retry_maxiter": 3}
    req = request(tmp_path / "w", "gpaw", lithium_cells(1), settings=settings)
    (first,) = label_structures(req)["labels"]
    assert first["status"] == "failed" and "SCF not converged" in first["reason"]
    logs = mtimes([Path(req.workdir) / "0" / "gpaw.txt", Path(req.workdir) / "0" / "gpaw-retry.txt"])
    again = label_structures(req)
    assert again["reused"] == 1 and plain(again["labels"][0]) == plain(first)
    assert mtimes(logs) == logs


def spy_on_chgnet(monkeypatch) -> list[int]:
    """The ids CHGNet's label() is asked for from now on; it still labels them."""
    calls: list[int] = []
    real = CHGNetLabeler.label

    def label(self, structures, structure_ids, workdir):
        calls.extend(int(s) for s in structure_ids)
        return real(self, structures, structure_ids, workdir)

    monkeypatch.setattr(CHGNetLabeler, "label", label)
    return calls


def test_chgnet_batch_killed_midway_labels_only_the_rest(tmp_path, monkeypatch):
    frames = cathode_frames(8, supercell=(2, 2, 1))  # 16 atoms: about 0.2 s a label here
    req = request(tmp_path / "killed", "chgnet", frames, ids=range(100, 108))
    kept = kill_after_first_entry(req, tmp_path)
    before = mtimes(kept.values())
    calls = spy_on_chgnet(monkeypatch)

    result = label_structures(req)

    assert calls == [sid for sid in req.structure_ids if sid not in kept]  # the rest only, in order
    assert result["reused"] == len(kept) and mtimes(before) == before
    assert [l["structure_id"] for l in result["labels"]] == list(req.structure_ids)
    fresh = label_structures(request(tmp_path / "uninterrupted", "chgnet", frames, ids=range(100, 108)))
    assert fresh["reused"] == 0 and [l["status"] for l in fresh["labels"]] == ["ok"] * 8
    assert_same_labels(result["labels"], fresh["labels"])
    calls.clear()
    assert label_structures(req)["reused"] == 8 and calls == []  # a third run computes nothing


# ------------------------------------------------------------------ stale entries
def test_an_entry_is_used_only_for_its_structure_labeler_and_settings(tmp_path):
    atoms = cathode_frames(1)[0]
    label = Label(3, "ok", energy=-1.0, forces=((0.0, 0.0, 0.0),) * len(atoms), wall_s=2.0)
    journal = LabelJournal(tmp_path, "chgnet", {"threads": 1})
    journal.keep(3, atoms, label)
    assert journal.load(3, atoms.copy()) == label
    assert LabelJournal(tmp_path, "gpaw", {"threads": 1}).load(3, atoms) is None
    assert LabelJournal(tmp_path, "chgnet", {"threads": 2}).load(3, atoms) is None
    assert LabelJournal(tmp_path, "chgnet", {}).load(3, atoms) is None
    moved, strained, open_ = atoms.copy(), atoms.copy(), atoms.copy()
    moved.positions[2, 1] += 1e-9
    strained.cell[0, 0] += 1e-9
    open_.pbc = (True, True, False)
    swapped = atoms.copy()
    swapped.numbers[[0, 1]] = swapped.numbers[[1, 0]]
    for other in (moved, strained, open_, swapped):
        assert label_key(other, "chgnet", {"threads": 1}) != label_key(atoms, "chgnet", {"threads": 1})
        assert journal.load(3, other) is None
    assert journal.load(4, atoms) is None  # no entry


def test_stale_entries_under_the_same_ids_are_relabeled(tmp_path, monkeypatch):
    a, b, c = cathode_frames(3)
    workdir = tmp_path / "w"
    first = label_structures(request(workdir, "chgnet", [a, b]))
    assert first["reused"] == 0
    calls = spy_on_chgnet(monkeypatch)

    # another structure under id 0: relabeled; id 1 unchanged: reused
    swapped = label_structures(request(workdir, "chgnet", [c, b]))
    assert swapped["reused"] == 1 and calls == [0]
    (want_c,) = CHGNetLabeler({}).label([c], [0], tmp_path / "direct")
    assert swapped["labels"][0]["energy"] == pytest.approx(want_c.energy, abs=1e-6)
    assert swapped["labels"][0]["energy"] != pytest.approx(first["labels"][0]["energy"], abs=1e-3)

    # other settings (the same physics, but not the same request): everything again
    calls.clear()
    assert label_structures(request(workdir, "chgnet", [c, b], settings={"threads": 1}))["reused"] == 0
    assert calls == [0, 1]

    # an entry another labeler left under id 0 (here: gpaw's, with a made-up energy)
    req = request(workdir, "chgnet", [c, b], settings={"threads": 1})
    c_as_sent = from_extxyz(req.structures_extxyz)[0]  # the structure the task reads, bit for bit
    fake = Label(0, "ok", energy=123.0, forces=((0.0, 0.0, 0.0),) * len(c))
    LabelJournal(workdir, "gpaw", {"threads": 1}).keep(0, c_as_sent, fake)
    calls.clear()
    result = label_structures(req)
    assert result["reused"] == 1 and calls == [0]
    assert result["labels"][0]["energy"] == pytest.approx(want_c.energy, abs=1e-6)


# ----------------------------------------------------------------- corrupt entries
def test_torn_or_corrupt_entries_are_ignored_and_relabeled(tmp_path, monkeypatch):
    frames = cathode_frames(5)
    req = request(tmp_path / "w", "chgnet", frames)
    first = label_structures(req)
    kept = entries(Path(req.workdir))
    text = kept[0].read_text()
    kept[0].write_text(text[: len(text) // 2])  # torn mid-file
    kept[1].write_bytes(b"\x00\xff\x13garbage")
    entry = json.loads(kept[2].read_text())
    entry["label"]["energy"] += 0.5  # edited: the digest no longer matches
    kept[2].write_text(json.dumps(entry))
    entry = json.loads(kept[3].read_text())
    entry["label"]["forces"] = entry["label"]["forces"][:-1]  # a whole, well-signed entry of the wrong shape
    body = {k: v for k, v in entry.items() if k != "digest"}
    kept[3].write_text(json.dumps({**body, "digest": _digest(body)}))
    (kept[4].parent / ".4.json.999.tmp").write_text("{")  # a write the kill cut short
    calls = spy_on_chgnet(monkeypatch)

    result = label_structures(req)

    assert calls == [0, 1, 2, 3] and result["reused"] == 1
    assert_same_labels(result["labels"], first["labels"])
    journal, as_sent = LabelJournal(req.workdir, "chgnet", {}), from_extxyz(req.structures_extxyz)
    assert all(journal.load(sid, atoms) is not None for sid, atoms in enumerate(as_sent))  # rewritten whole
    assert journal.load(4, as_sent[4]) == Label.from_dict(plain(first["labels"][4]))
