"""VASP labeler: PBE+U single points for Li/Ni/Co/Mn/Al/O cathodes, Materials Project style.

The inputs (``VaspSettings``, INCAR rules, POTCARs, the input writer) are in
``remote_al.labelers.vasp_inputs``, the output parsing in ``remote_al.labelers.vasp_outputs``;
this module runs the configured command and turns a converged DFT step into a label,
with one retry of an unconverged SCF.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from remote_al.labelers.base import Labeler, LabelingError, validate_label
from remote_al.labelers.vasp_inputs import (
    VaspSettings,
    find_potcars,
    potcar_root,
    retry_incar,
    unpermute,
    write_vasp_inputs,
)
from remote_al.labelers.vasp_outputs import IonicStep, VaspOutputError, parse_vasp_outputs
from remote_al.records import Label

# Outputs kept in each run directory; bulky ones removed after the run.
KEY_INPUTS = ("INCAR", "KPOINTS", "POSCAR")
RUN_OUTPUTS = ("OSZICAR", "OUTCAR", "vasprun.xml", "vasp.out")
BULKY_OUTPUTS = ("WAVECAR", "CHG", "CHGCAR", "PROCAR", "LOCPOT", "ELFCAR", "AECCAR0", "AECCAR1",
                 "AECCAR2", "WAVEDER", "vaspwave.h5")


def _vasp_command(settings: VaspSettings, environ: Mapping[str, str] = os.environ) -> list[str]:
    command = settings.command or environ.get("VASP_COMMAND")
    if not command:
        raise LabelingError(
            "no VASP command: set the `command` setting of the vasp labeler "
            "(e.g. \"mpiexec -n 128 vasp_std\") or the VASP_COMMAND environment variable"
        )
    argv = shlex.split(command)
    if shutil.which(argv[0]) is None:
        raise LabelingError(f"VASP command {argv[0]!r} (from {command!r}) is not on PATH; fix the `command` setting")
    return argv


@dataclass(frozen=True)
class RunOutcome:
    step: IonicStep | None  # the last ionic step, when there is one
    failure: str  # "" when ``step`` is converged
    scf_failure: bool  # the failure is an unconverged SCF (worth a retry)
    crashed: bool = False  # VASP ended without an ionic step: perhaps killed with the task


def run_vasp(argv: Sequence[str], rundir: Path, timeout_s: float | None) -> RunOutcome:
    """Run VASP once in ``rundir`` and judge its last ionic step."""
    for name in RUN_OUTPUTS:  # never judge a stale output of an earlier run
        (rundir / name).unlink(missing_ok=True)
    with open(rundir / "vasp.out", "wb") as out:
        proc = subprocess.Popen(list(argv), cwd=rundir, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and its ranks too
            proc.wait()
            return RunOutcome(None, f"VASP did not finish within {timeout_s} s (the timeout_s setting)", False)
    for name in BULKY_OUTPUTS:
        (rundir / name).unlink(missing_ok=True)
    # The exit code alone decides nothing: MPI launchers can fail after VASP wrote a
    # complete, converged step, and VASP can exit 0 without one. The outputs decide.
    try:
        step = parse_vasp_outputs(rundir)[-1]
    except VaspOutputError as exc:
        tail = (rundir / "vasp.out").read_text(errors="replace").strip().splitlines()[-3:]
        return RunOutcome(None, f"VASP exited with code {rc}, {exc}; last output: {' | '.join(tail)}", False,
                          crashed=True)
    if step.source != "dft":
        # VASP's own force field predicted the last step (ML_LMLFF on, e.g. from a site-wide
        # INCAR template or ML_ISTART): not a first-principles label, and no retry fixes it.
        return RunOutcome(step, f"{step.reason}; labels must come from DFT: set ML_LMLFF = .FALSE.", False)
    if not step.converged:
        return RunOutcome(step, step.reason, True)
    return RunOutcome(step, "", False)


def _archive_attempt(rundir: Path, attempt: int) -> Path:
    """Keep an attempt's inputs and outputs in ``rundir/attempt-<n>/``."""
    keep = rundir / f"attempt-{attempt}"
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir()
    for name in KEY_INPUTS:
        if (rundir / name).exists():
            shutil.copy2(rundir / name, keep / name)
    for name in RUN_OUTPUTS:
        if (rundir / name).exists():
            shutil.move(str(rundir / name), keep / name)
    return keep


class VaspLabeler(Labeler):
    """PBE+U single points with VASP; see ``VaspSettings`` for the settings."""

    name = "vasp"
    note = "DFT (VASP, PBE+U, MP conventions)"

    def __init__(self, settings=None):
        super().__init__(settings)
        self._transient: set[int] = set()  # ids whose last failure was a crash or an error around the run

    def reusable(self, label: Label) -> bool:
        """Failures that the structure and settings decide (SCF, force-field step, timeout,
        invalid values) are kept; a crash without an ionic step or an error around the run
        (files, parsing) may come from the machine or the kill of the task: not kept."""
        return label.status == "ok" or label.structure_id not in self._transient

    def label(self, structures: Sequence, structure_ids: Sequence[int], workdir: Path) -> list[Label]:
        settings = VaspSettings.from_mapping(self.settings)
        # Setup problems surface here, before any VASP run.
        argv = _vasp_command(settings)
        species = list(dict.fromkeys(s for atoms in structures for s in atoms.get_chemical_symbols()))
        potcars = dict(zip(species, find_potcars(species, settings, potcar_root(settings))))
        labels = []
        for atoms, sid in zip(structures, structure_ids):
            t0 = time.time()
            rundir = Path(workdir) / str(sid)
            self._transient.discard(int(sid))
            try:
                label = self._label_one(atoms, int(sid), rundir, settings, argv, potcars)
            except Exception as exc:  # one bad structure must not lose the others
                self._transient.add(int(sid))
                label = Label(int(sid), "failed", reason=f"{type(exc).__name__}: {exc} (run dir {rundir})")
            label = dataclasses.replace(label, wall_s=time.time() - t0)
            labels.append(validate_label(label, len(atoms)))
        return labels

    def _run(self, sid: int, argv, rundir: Path, settings: VaspSettings) -> RunOutcome:
        outcome = run_vasp(argv, rundir, settings.timeout_s)
        if outcome.crashed:
            self._transient.add(sid)
        return outcome

    def _label_one(self, atoms, sid, rundir, settings, argv, potcars) -> Label:
        from pymatgen.io.vasp.inputs import Incar

        order = write_vasp_inputs(atoms, rundir, settings, potcars)
        outcome = self._run(sid, argv, rundir, settings)
        if outcome.scf_failure and settings.scf_retry:
            first = outcome.failure
            first_dir = _archive_attempt(rundir, 1)
            incar = retry_incar(Incar.from_file(first_dir / "INCAR"), settings)
            Incar(incar).write_file(rundir / "INCAR")
            outcome = self._run(sid, argv, rundir, settings)
            if outcome.failure:
                changes = ", ".join(f"{k}={incar[k]}" for k in (*settings.retry_incar, "NELM") if k in incar)
                return Label(sid, "failed", reason=(
                    f"{outcome.failure} (after a retry with {changes}; first try: {first}; run dir {rundir})"
                ))
        if outcome.failure:
            return Label(sid, "failed", reason=f"{outcome.failure} (run dir {rundir})")
        step = outcome.step
        if step.source != "dft" or not step.converged:  # run_vasp never lets one through; a label must not either
            raise LabelingError(f"ionic step {step.index} is not a converged DFT step: {step.reason}")
        return Label(
            structure_id=sid,
            status="ok",
            energy=step.energy,
            forces=tuple(unpermute(step.forces, order)),
            stress=step.stress,
            magmoms=None if step.magmoms is None else tuple(unpermute(step.magmoms, order)),
        )

