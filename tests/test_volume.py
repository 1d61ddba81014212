"""Composition in campaign files, NPT against NVT, relaxations and the volume curve."""

import json
import sqlite3

import numpy as np
import pytest

from driver.config import parse_config
from driver.errors import ConfigError

BASE = {
    "campaign": {"name": "vol", "type_map": ["Li", "Ni", "Co", "Mn", "O"], "seed": 5, "max_rounds": 1},
    "structures": [
        {"name": "LNO", "li_contents": [1.0, 0.5], "supercell": [2, 2, 1], "orderings": 2},
        {"name": "NMC", "metals": "NMC811", "supercell": [5, 2, 1], "temperatures_K": [300.0]},
    ],
    "exploration": {"temperatures_K": [300.0, 600.0], "ensemble": "npt", "pressures_GPa": [0.0, 2.0]},
    "volume": {"check": ["LNO-x0.5"]},
}


def _cfg(tmp_path, data=None):
    return parse_config(json.loads(json.dumps(data or BASE)), base_dir=tmp_path)


def test_grid_and_orderings_expand_to_named_structures(tmp_path):
    cfg = _cfg(tmp_path)
    names = [s.name for s in cfg.structures]
    # x = 1 has one distinct ordering; the expansion still names two (the builder refuses the second)
    assert names == ["LNO-x1", "LNO-x1-o1", "LNO-x0.5", "LNO-x0.5-o1", "NMC"]
    assert {s.group for s in cfg.structures} == {"LNO", "NMC"}
    assert [s.ordering for s in cfg.structures][:4] == [0, 1, 0, 1]
    assert cfg.volume.enabled and cfg.volume.check == ("LNO-x0.5",)


def test_sweep_follows_each_structure_schedule(tmp_path):
    from driver.campaign.view import CampaignView

    cfg = _cfg(tmp_path)
    sweep = CampaignView.sweep(type("V", (), {"cfg": cfg})())
    per = {}
    for spec, t, p, w in sweep:
        per.setdefault(spec.name, set()).add((t, p))
    assert per["LNO-x0.5"] == {(300.0, 0.0), (300.0, 2.0), (600.0, 0.0), (600.0, 2.0)}
    assert per["NMC"] == {(300.0, 0.0), (300.0, 2.0)}  # its own temperatures, the shared pressures


def test_sweep_takes_relaxations_and_md_in_turn(tmp_path):
    """With relaxation explorations, a round capped after a few explorations still runs MD:
    relaxations and MD alternate (the relaxations member-major), so the first two entries
    per structure give every structure one relaxation and the MD gets its turn."""
    from driver.campaign.view import CampaignView

    data = json.loads(json.dumps(BASE))
    data["exploration"].update(relax=True)
    data["training"] = {"ensemble_size": 3}
    cfg = _cfg(tmp_path, data)
    sweep = CampaignView.sweep(type("V", (), {"cfg": cfg})())
    relax = [(s.name, w) for s, _, p, w in sweep if p == "relax"]
    md = [(s.name, t, p) for s, t, p, _ in sweep if p != "relax"]
    assert len(relax) == 3 * len(cfg.structures) and len(md) == 4 * 4 + 2  # nothing lost or repeated
    assert [p == "relax" for _, _, p, _ in sweep[:10]] == [True, False] * 5
    first = sweep[:2 * len(cfg.structures)]
    assert {s.name for s, _, p, w in first if p == "relax"} == {s.name for s in cfg.structures}
    assert {w for _, _, p, w in first if p == "relax"} == {0}  # member-major


@pytest.mark.parametrize(
    "change, field",
    [
        ({"structures": [{"name": "NMC", "metals": "NMC811", "supercell": [2, 2, 1]}]}, "structures[0].supercell"),
        ({"structures": [{"name": "X", "metals": {"Ni": 0.5, "Xx": 0.5}}]}, "structures[0].metals"),
        ({"structures": [{"name": "X", "metals": {"Ni": 0.5, "Co": 0.2}}]}, "structures[0].metals"),
        ({"volume": {"check": ["nope"]}}, "volume.check"),
        ({"campaign": {"name": "vol", "type_map": ["Li", "Ni", "O"]}}, "campaign.type_map"),
        ({"structures": [{"name": "L", "ensemble": "nve"}]}, "structures[0].ensemble"),
    ],
)
def test_bad_composition_input_names_the_field(tmp_path, change, field):
    data = json.loads(json.dumps(BASE))
    data.update(change)
    if "volume" not in change:
        data["volume"] = {}
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, data)
    assert err.value.field == field, str(err.value)


def test_supercell_error_suggests_a_working_one(tmp_path):
    data = json.loads(json.dumps(BASE))
    data["structures"] = [{"name": "NMC", "metals": "NMC811", "supercell": [2, 2, 1]}]
    data["volume"] = {}
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, data)
    assert "supercell" in str(err.value) and "(" in str(err.value)


def test_built_structures_have_the_requested_composition(tmp_path):
    from driver.preflight import build_structure

    cfg = _cfg(tmp_path)
    by = {s.name: build_structure(s) for s in cfg.structures if s.name != "LNO-x1-o1"}
    counts = {n: {el: a.get_chemical_symbols().count(el) for el in ("Li", "Ni", "Co", "Mn", "O")} for n, a in by.items()}
    assert counts["LNO-x1"] == {"Li": 4, "Ni": 4, "Co": 0, "Mn": 0, "O": 8}
    assert counts["LNO-x0.5"]["Li"] == 2 and counts["LNO-x0.5-o1"]["Li"] == 2
    assert counts["NMC"] == {"Li": 10, "Ni": 8, "Co": 1, "Mn": 1, "O": 20}
    # the two orderings of x = 0.5 differ
    assert not np.allclose(by["LNO-x0.5"].get_positions(), by["LNO-x0.5-o1"].get_positions())


# ----------------------------------------------------------------------- MD and relax
def _md(model, ensemble, tmp_path, pressure=0.0):
    from remote_al.dynamics import run_md
    from remote_al.records import MDRequest
    from remote_al.structures import cathode_cell, to_extxyz

    req = MDRequest(task_key=f"md-{ensemble}", workdir=str(tmp_path / ensemble), model_path=model,
                    structure_extxyz=to_extxyz(cathode_cell(1.0)), temperature_K=300.0, steps=80,
                    n_frames=4, seed=1, ensemble=ensemble, pressure_GPa=pressure)
    return run_md(req)


def test_npt_changes_the_volume_and_nvt_does_not(tiny_ensemble, tmp_path):
    model = tiny_ensemble[0].model_path
    nvt = _md(model, "nvt", tmp_path)
    npt = _md(model, "npt", tmp_path, pressure=5.0)
    assert nvt.volume_end_A3 == pytest.approx(nvt.volume_start_A3, rel=1e-12)
    assert abs(npt.volume_end_A3 / npt.volume_start_A3 - 1.0) > 1e-3
    from remote_al.structures import from_extxyz

    vols = [a.get_volume() for a in from_extxyz(npt.frames_extxyz)]
    assert len(set(np.round(vols, 6))) > 1  # the sampled frames differ in volume


def test_relaxation_exploration_returns_frames_along_the_path(tiny_ensemble, tmp_path):
    from deepmd.calculator import DP

    from remote_al.functions import run_md
    from remote_al.records import MDRequest, MDResult
    from remote_al.structures import cathode_cell, from_extxyz, min_distance, to_extxyz

    model = tiny_ensemble[0].model_path
    start = cathode_cell(0.5)
    req = MDRequest(task_key="relax-x", workdir=str(tmp_path / "rx"), model_path=model,
                    structure_extxyz=to_extxyz(start), steps=60, n_frames=5, seed=3, ensemble="relax")
    res = MDResult.from_dict(run_md(req.to_dict()))
    frames = from_extxyz(res.frames_extxyz)
    assert 2 <= res.n_frames == len(frames) <= 5 and res.mean_temperature_K == 0.0
    steps = [a.info["relax_step"] for a in frames]
    assert steps == sorted(steps) and steps[0] == 0
    if "path cut" in res.stop_reason:  # this tiny model collapses the cell: only the path before it
        cut = int(res.stop_reason.split("step ")[1].split(":")[0])
        assert steps[-1] == cut - 1 and all(min_distance(a) >= 0.5 for a in frames)
    else:
        assert steps[-1] == res.steps_done - 1  # the path's end is a candidate
        assert frames[-1].get_volume() == pytest.approx(res.volume_end_A3, rel=1e-9)
    assert res.volume_end_A3 != pytest.approx(res.volume_start_A3, rel=1e-6)  # the cell relaxed

    def energy(a):
        a = a.copy()
        a.calc = DP(model=model)
        return float(a.get_potential_energy())

    assert energy(frames[-1]) < energy(frames[0])  # downhill along the path
    # the same request (same seed) gives the same path; another seed another start
    again = MDResult.from_dict(run_md({**req.to_dict(), "workdir": str(tmp_path / "rx2")}))
    assert again.frames_extxyz == res.frames_extxyz
    other = MDResult.from_dict(run_md({**req.to_dict(), "workdir": str(tmp_path / "rx3"), "seed": 4}))
    assert other.frames_extxyz != res.frames_extxyz


def test_relax_with_each_member_and_with_the_labeler(tiny_ensemble, tmp_path):
    from remote_al.functions import relax_structure
    from remote_al.records import RelaxRequest, RelaxResult
    from remote_al.structures import cathode_cell, perturb, to_extxyz

    atoms = perturb(cathode_cell(1.0), 0.03, 0.02, np.random.default_rng(0))
    paths = tuple(m.model_path for m in tiny_ensemble)
    ens = RelaxResult.from_dict(relax_structure(RelaxRequest(
        task_key="r", workdir=str(tmp_path / "ens"), structure_extxyz=to_extxyz(atoms),
        model_paths=paths, max_steps=40)))
    assert ens.method == "ensemble" and len(ens.volumes_A3) == len(paths)
    for v, cell in zip(ens.volumes_A3, ens.cells):
        assert v == pytest.approx(abs(np.linalg.det(np.reshape(cell, (3, 3)))), rel=1e-9)
    # members differ: the spread is what the band of the volume curve is made of
    assert np.std(ens.volumes_A3) > 0

    from remote_al.labelers import get_labeler

    lab_req = RelaxRequest(task_key="l", workdir=str(tmp_path / "lab"), structure_extxyz=to_extxyz(atoms),
                           labeler="chgnet", max_steps=25)
    lab = RelaxResult.from_dict(relax_structure(lab_req))
    start = atoms.copy()
    start.calc = get_labeler("chgnet").relax_calculator(start, tmp_path)
    e0 = start.get_potential_energy() / len(start)
    assert lab.method == "chgnet" and lab.energies_eV_atom[0] < e0  # the relaxation lowered the energy
    assert "stand-in" in lab.note


def test_vasp_labeler_refuses_relaxation_with_a_clear_message(tmp_path):
    from remote_al.labelers import get_labeler
    from remote_al.labelers.base import LabelingError
    from remote_al.structures import cathode_cell

    with pytest.raises(LabelingError, match="does not relax"):
        get_labeler("vasp").relax_calculator(cathode_cell(1.0), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_campaign_with_volume_curve_end_to_end(tmp_path, mode):
    """Li_x NiO2 at two contents, NPT exploration, then the volume phase and its report."""
    from driver import volume
    from driver.backends.local import LocalBackend
    from driver.campaign import Campaign
    from driver.report import write_report
    from driver.state import State

    data = {
        "campaign": {"name": "volmini", "type_map": ["Li", "Ni", "O"], "seed": 2, "max_rounds": 1},
        "backend": {"gpu_slots": 2, "cpu_slots": 1, "retry_backoff_s": 0.5},
        "structures": [{"name": "L", "li_contents": [1.0, 0.5]}],
        "initial": {"n_per_structure": 4, "rattle_A": 0.05, "strain": 0.03, "relax": True},
        "exploration": {"temperatures_K": [300.0], "steps": 30, "n_frames": 3, "ensemble": "npt",
                        "relax": True, "relax_steps": 20},
        # one label per exploration: the asynchronous round runs the whole sweep too
        "selection": {"force_threshold": 0.0, "force_upper": 1000.0, "max_per_round": 6, "max_per_exploration": 1},
        "labeler": {"kind": "chgnet", "batch_size": 4},
        "training": {"ensemble_size": 2, "numb_steps": 60, "numb_steps_continue": 30,
                     "deepmd": {"loss": {"start_pref_v": 0.02, "limit_pref_v": 1.0}}},
        "test": {"n_initial_per_structure": 1, "n_per_round": 2},
        "steering": {"mode": mode},
        "volume": {"check": ["L-x0.5"], "max_steps": 40},
    }
    cfg = parse_config(data, base_dir=tmp_path)
    lines = []
    backend = LocalBackend(cfg.directory / "engine", gpu_slots=2, cpu_slots=1)
    Campaign(cfg, backend, say=lines.append, status_every_s=30).run()
    db = sqlite3.connect(cfg.directory / "state.sqlite")
    assert db.execute("SELECT value FROM meta WHERE key='phase'").fetchone()[0] == "done"
    fns = dict(db.execute("SELECT function, COUNT(*) FROM tasks WHERE status='done' GROUP BY function").fetchall())
    # [initial] relax: the labeler relaxed both structures once, before any initial label;
    # the volume check read that relaxation again instead of running a second one
    assert fns.get("relax") == 2 and fns.get("relax_label") == 2
    first_label = db.execute("SELECT MIN(created) FROM tasks WHERE function='label'").fetchone()[0]
    assert db.execute("SELECT MAX(finished) FROM tasks WHERE function='relax_label'").fetchone()[0] <= first_label
    from remote_al.structures import from_extxyz

    relaxed = {}
    for key, res in db.execute("SELECT key, result FROM tasks WHERE function='relax_label'"):
        relaxed[key.split(":", 1)[1]] = from_extxyz(json.loads(res)["relaxed_extxyz"])[0]
    md = [(json.loads(r[0]), json.loads(r[1])) for r in db.execute("SELECT request, context FROM tasks "
                                                                    "WHERE function='md'")]
    # one sweep: each member relaxes each structure, then the NPT runs (the asynchronous
    # round goes on into the next sweep until its cap is filled)
    ensembles = sorted(r["ensemble"] for r, _ in md)
    if mode == "sync":
        assert ensembles == ["npt", "npt"] + ["relax"] * 4
    else:
        assert ensembles.count("npt") >= 2 and ensembles.count("relax") >= 4, ensembles
    for r, context in md:  # NPT starts from the labeler-relaxed structure; relaxations from the built one
        start = from_extxyz(r["structure_extxyz"])[0]
        same = np.allclose(start.cell[:], relaxed[context["spec"]].cell[:], atol=1e-6)
        assert same == (r["ensemble"] == "npt"), r["task_key"]
    init = [from_extxyz(x[0])[0] for x in db.execute(
        "SELECT extxyz FROM structures WHERE origin='initial' AND spec='L-x0.5'")]
    v_rel = relaxed["L-x0.5"].get_volume()
    assert abs(np.mean([a.get_volume() for a in init]) / v_rel - 1) < 0.05  # strained around the relaxed cell
    relax_frames = db.execute(
        "SELECT COUNT(*) FROM structures WHERE source_task LIKE 'md:r1:%:relax%' AND force_width IS NOT NULL"
    ).fetchone()[0]
    assert relax_frames > 0  # the relaxation paths were scored as candidates like MD frames
    # the round's held-out frames come from the NPT runs, none from the (colder) relaxation paths
    held_out = [r[0] for r in db.execute("SELECT source_task FROM structures WHERE origin='md' AND split='test'")]
    assert len(held_out) == 2 and all(":T300:" in key for key in held_out), held_out

    state = State(cfg.directory / "state.sqlite")
    rows = {r["name"]: r for r in volume.summarize(state, cfg)}
    assert set(rows) == {"L-x1", "L-x0.5"}
    for r in rows.values():
        assert r["volume_fu"] > 0 and r["volume_fu_band"] >= 0 and r["a"] > 0 and r["c"] > r["a"]
        members = np.array(r["volumes_fu_members"])
        assert r["volume_fu"] == pytest.approx(members.mean())
    chk = rows["L-x0.5"]
    assert chk["volume_diff"] == pytest.approx(chk["volume_fu"] / chk["labeler_volume_fu"] - 1.0)
    assert chk["labeler_volume_fu"] == pytest.approx(v_rel / 4)
    assert "labeler_volume_fu" in rows["L-x1"]  # relaxed for the initial data: in the table too
    assert any("L-x0.5" in line for line in lines)  # the table was printed

    from driver.status import summary

    assert {r["name"] for r in summary(cfg.directory)["volume"]} == {"L-x1", "L-x0.5"}  # remote-al status

    index = write_report(cfg.directory, compute_parity=False)
    html = index.read_text()
    assert "volume.png" in html and (index.parent / "volume.png").stat().st_size > 5000
