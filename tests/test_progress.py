"""Progress of running work read from the files the workers write (driver.progress)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from driver.progress import label_progress, md_progress, progress_rows, running_progress, training_progress
from driver.state import State

LCURVE = """# step       rmse_val    rmse_trn    rmse_e_val  rmse_e_trn    rmse_f_val  rmse_f_trn   lr
# If there is no available reference data, rmse_*_{val,trn} will print nan
      1      3.65e+01    3.91e+01      9.97e-01    1.01e+00      1.15e+00    1.24e+00    1.0e-03
     10      3.11e+01    3.34e+01      9.46e-01    9.71e-01      9.83e-01    1.06e+00    1.0e-03
     200      2.08e+01    2.62e+01      8.50e-01    8.78e-01      7.16e-01    9.02e-01    8.4e-04
"""


def _training_dir(d: Path, lcurve: str = LCURVE, steps: int = 800, t0: float = 1000.0, t1: float = 1050.0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "input.json").write_text(json.dumps({"training": {"numb_steps": steps, "disp_freq": 10}}))
    os.utime(d / "input.json", (t0, t0))
    if lcurve is not None:
        (d / "lcurve.out").write_text(lcurve)
        os.utime(d / "lcurve.out", (t1, t1))
    return d


def test_training_progress_from_lcurve(tmp_path):
    d = _training_dir(tmp_path / "m0")
    p = training_progress(d, now=1050.0)
    assert (p.step, p.steps_total) == (200, 800) and p.fraction == 0.25
    assert p.rmse_e == pytest.approx(0.878) and p.rmse_f == pytest.approx(0.902)
    assert p.eta_s == pytest.approx(150.0)  # 200 steps in 50 s: 600 to go take 150 s
    assert training_progress(d, now=1110.0).eta_s == pytest.approx(90.0)  # 60 s later
    assert training_progress(d, now=5000.0).eta_s == 0.0  # never negative


@pytest.mark.parametrize("lcurve, step", [(None, None), ("# step rmse_trn\n", None), ("junk\n", None),
                                          ("# step rmse_trn\n 10 1.0e+00\n 20 2.0e", 10),  # a row being written
                                          ("# step rmse_trn\n 10 1.0e+00\n 20", 10)])
def test_training_progress_before_the_first_row_or_mid_write(tmp_path, lcurve, step):
    p = training_progress(_training_dir(tmp_path / "m", lcurve=lcurve))
    assert (p and p.step) == step
    assert training_progress(tmp_path / "not-started") is None


def test_md_progress_from_the_trajectory(tmp_path):
    from ase.io import write

    from remote_al.structures import cathode_cell

    d = tmp_path / "md"
    d.mkdir()
    for step in (50, 100, 150):
        a = cathode_cell(1.0)
        a.info["md_step"] = step
        write(d / "traj.extxyz", a, format="extxyz", append=True)
    os.utime(d / "traj.extxyz", (1030.0, 1030.0))
    p = md_progress(d, 600, started=1000.0, now=1030.0)
    assert (p.step, p.steps_total, p.rmse_f) == (150, 600, None)
    assert p.eta_s == pytest.approx(90.0)  # 150 steps in 30 s: 450 to go
    assert md_progress(tmp_path / "nothing", 600) is None


def test_status_shows_running_members_and_labels_asked(tmp_path, capsys, monkeypatch):
    from driver.cli import main

    camp = tmp_path / "c"
    st = State(camp / "state.sqlite")
    now = time.time()
    for m in range(2):
        wd = _training_dir(camp / "work" / f"train-g1-m{m}", t0=now - 100, t1=now)
        st.add_task(f"train:g1:m{m}", "train", "gpu", 1, 1, {"workdir": str(wd)})
        st.mark_submitted(f"train:g1:m{m}", f"b{m}")
    st.add_task("train:g1:m2", "train", "gpu", 1, 1, {"workdir": str(camp / "work" / "train-g1-m2")})
    st.mark_submitted("train:g1:m2", "b2")  # submitted, no output yet
    st.add_task("label:r1:b0", "label", "cpu", 1, 1, {"structure_ids": [1, 2, 3]})
    st.set_meta("phase", "train")
    assert label_progress(st) == (0, 3)
    running = running_progress(st, now=now)
    assert [t.key for t in running] == ["train:g1:m0", "train:g1:m1", "train:g1:m2"]
    assert running[2].progress is None and running[0].progress.step == 200
    assert progress_rows(running)[0][:3] == ["train:g1:m0", "200/800", "25 %"]
    st.close()

    monkeypatch.setenv("COLUMNS", "100")
    assert main(["status", str(camp)]) == 0
    out = capsys.readouterr().out
    assert "(of 3 asked)" in out and "running" in out
    assert re.search(r"train:g1:m0\s*│\s*200/800\s*│\s*25 %\s*│\s*0\.878\s*│\s*0\.902\s*│\s*[45]:\d\d", out), out
    assert re.search(r"train:g1:m2\s*│\s*starting", out), out


def test_progress_bars_draw_on_a_terminal_and_stay_silent_elsewhere(tmp_path):
    import io

    from rich.console import Console

    from driver.progress import Progress, ProgressBars, TaskProgress

    running = [TaskProgress("train:g1:m0", "train", Progress(200, 800, 150.0, 0.878, 0.902)),
               TaskProgress("md:r1:w0", "md", Progress(150, 600, 90.0)),
               TaskProgress("train:g1:m1", "train", None)]
    screen = io.StringIO()
    with ProgressBars(Console(file=screen, force_terminal=True, width=120)) as bars:
        bars.update(running)
        bars._bars.refresh()
        drawn = screen.getvalue()
        assert "train:g1:m0" in drawn and "200/800" in drawn and "F RMSE 0.902 eV/A" in drawn and "2:30 left" in drawn
        assert "md:r1:w0" in drawn and "150/600" in drawn and "starting" in drawn
        bars.update(running[1:])  # m0 finished: its bar goes
        assert [t.description for t in bars._bars.tasks] == ["md:r1:w0", "train:g1:m1"]
    log = io.StringIO()
    with ProgressBars(Console(file=log, force_terminal=False)) as bars:
        bars.update(running)
    assert log.getvalue() == ""
