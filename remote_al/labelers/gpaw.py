"""GPAW labeler: real, open-source DFT single points for small cells.

Plane waves, spin-polarized from per-species initial moments, PBE with an optional Hubbard
U on the transition metals (``setups={"Ni": ":d,6.2"}``, the MP values by default). One
fresh calculator per structure, its log in ``workdir/<structure_id>/gpaw.txt``. An SCF that
does not converge (``KohnShamConvergenceError``) is retried once with a more damped mixer
and more iterations; if that fails too the structure gets a failed label.

Energies are free energies (force-consistent), the quantity the forces derive from. Stress
is off by default: at the low cutoffs used for small cells it carries a large Pulay stress.
Run with ``OMP_NUM_THREADS=1`` (two BLAS threads made GPAW slower, not faster).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from remote_al.labelers.base import Labeler, LabelingError, validate_label, validated_settings
from remote_al.labelers.vasp_inputs import HUBBARD_U
from remote_al.records import Label

# Initial moments (mu_B): Ni3+ (low-spin d7) and Co4+ carry about 1, Mn4+ 3; others 0.
INITIAL_MAGMOM: dict[str, float] = {"Ni": 1.0, "Co": 1.0, "Mn": 3.0}

# Second try after an unconverged SCF: Pulay mixing with a small step and a long history.
SCF_RETRY_MIXER: dict[str, Any] = {"name": "pulay", "beta": 0.02, "nmaxold": 8, "weight": 100.0}


@dataclass(frozen=True)
class GPAWSettings:
    """The ``settings`` mapping of the gpaw labeler, checked."""

    ecut: float = 400.0  # plane-wave cutoff, eV
    kpts: Sequence[int] | None = None  # Monkhorst-Pack size; else from kpoint_density
    kpoint_density: float = 2.0  # k-points per reciprocal Angstrom (ASE/GPAW convention)
    xc: str = "PBE"
    hubbard_u: Mapping[str, float] = field(default_factory=lambda: dict(HUBBARD_U))  # {} turns +U off
    magmom: Mapping[str, float] = field(default_factory=dict)  # per species, over INITIAL_MAGMOM
    smearing: Mapping[str, Any] = field(default_factory=lambda: {"name": "fermi-dirac", "width": 0.05})
    mixer: Mapping[str, Any] | None = None  # None: GPAW's default
    maxiter: int = 300
    convergence: Mapping[str, Any] = field(default_factory=lambda: {"energy": 1e-6, "density": 1e-5})
    retry_mixer: Mapping[str, Any] = field(default_factory=lambda: dict(SCF_RETRY_MIXER))
    retry_maxiter: int | None = None  # None: twice maxiter
    stress: bool = False
    reduce_cell: bool = True  # GPAW warns (and errs) for very skewed cells

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> "GPAWSettings":
        """Checked settings (keys, types, finite numbers, bounds); raises LabelingError."""

        def refusals(values):
            kpts = values.get("kpts")
            if isinstance(kpts, (list, tuple)) and (len(kpts) != 3 or not all(
                    isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= 64 for k in kpts)):
                yield ("kpts",), f"needs three integers in [1, 64], got {list(kpts)}", "e.g. kpts = [2, 2, 2]"
            for el, u in dict(values.get("hubbard_u") or {}).items():
                if isinstance(u, (int, float)) and not 0 <= u <= 20:
                    yield ("hubbard_u", el), f"U = {u} eV is outside [0, 20]", "use the MP values (the default)"

        return validated_settings(cls, settings, refusals=refusals, bounds={
            "ecut": {"gt": 0, "le": 5000},  # eV
            "kpoint_density": {"gt": 0, "le": 100},  # k-points per reciprocal A
            "maxiter": {"ge": 1, "le": 10_000},
            "retry_maxiter": {"ge": 1, "le": 100_000},
        })


def hubbard_setups(symbols: Sequence[str], hubbard_u: Mapping[str, float]) -> dict[str, str]:
    """GPAW ``setups`` for +U on the d shell of the species present, e.g. {"Ni": ":d,6.2"}."""
    return {s: f":d,{float(hubbard_u[s])}" for s in dict.fromkeys(symbols) if hubbard_u.get(s, 0.0)}


def initial_magmoms(symbols: Sequence[str], overrides: Mapping[str, float]) -> list[float]:
    table = {**INITIAL_MAGMOM, **overrides}
    return [float(table.get(s, 0.0)) for s in symbols]


def calculator_parameters(symbols: Sequence[str], settings: GPAWSettings, retry: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``gpaw.GPAW`` (without ``mode`` and ``txt``)."""
    params: dict[str, Any] = {
        "xc": settings.xc,
        "kpts": list(settings.kpts) if settings.kpts is not None
        else {"density": settings.kpoint_density, "gamma": True},
        "occupations": dict(settings.smearing),
        "spinpol": True,
        "setups": hubbard_setups(symbols, settings.hubbard_u),
        "convergence": dict(settings.convergence),
        "maxiter": settings.maxiter,
    }
    if settings.mixer is not None:
        params["mixer"] = dict(settings.mixer)
    if retry:
        params["mixer"] = dict(settings.retry_mixer)
        params["maxiter"] = settings.retry_maxiter or 2 * settings.maxiter
    return params


def reduced_cell_copy(atoms):
    """The same crystal on a Minkowski-reduced cell (near-orthogonal vectors).

    The new vectors are integer combinations of the old ones and the Cartesian positions
    only move by lattice vectors, so the frame and the atom order are kept: forces and
    stress need no mapping back. (``ase.build.niggli_reduce`` would also rotate the cell.)
    """
    from ase.geometry import minkowski_reduce

    reduced, _ = minkowski_reduce(atoms.cell.array)
    out = atoms.copy()
    out.set_cell(reduced, scale_atoms=False)
    out.wrap()
    return out


class GPAWLabeler(Labeler):
    """DFT single points with GPAW; see ``GPAWSettings`` for the settings."""

    name = "gpaw"
    note = "DFT (GPAW, PBE+U, plane waves)"

    def label(self, structures: Sequence, structure_ids: Sequence[int], workdir: Path) -> list[Label]:
        settings = GPAWSettings.from_mapping(self.settings)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # effective only before BLAS starts
        try:
            import gpaw  # noqa: F401
        except ImportError as exc:
            raise LabelingError(
                f"GPAW is not importable on this endpoint ({exc}); install it with "
                "scripts/install_gpaw.sh (see docs/labelers.md)"
            ) from exc
        labels = []
        for atoms, sid in zip(structures, structure_ids):
            t0 = time.time()
            rundir = Path(workdir) / str(sid)
            rundir.mkdir(parents=True, exist_ok=True)
            try:
                label = self._label_one(atoms, int(sid), rundir, settings)
            except Exception as exc:  # one bad structure must not lose the others
                label = Label(int(sid), "failed", reason=f"GPAW raised {type(exc).__name__}: {exc} (run dir {rundir})")
            labels.append(validate_label(dataclasses.replace(label, wall_s=time.time() - t0), len(atoms)))
        return labels

    def relax_calculator(self, atoms, workdir: Path):
        """GPAW with the labeling settings and stress; the cell is not Minkowski-reduced
        (the relaxed cell must stay in the caller's basis)."""
        from gpaw import GPAW, PW

        settings = GPAWSettings.from_mapping(self.settings)
        symbols = atoms.get_chemical_symbols()
        atoms.set_initial_magnetic_moments(initial_magmoms(symbols, settings.magmom))
        Path(workdir).mkdir(parents=True, exist_ok=True)
        return GPAW(mode=PW(settings.ecut), txt=str(Path(workdir) / "gpaw-relax.txt"),
                    **calculator_parameters(symbols, settings))

    def _label_one(self, atoms, sid: int, rundir: Path, settings: GPAWSettings) -> Label:
        from gpaw import KohnShamConvergenceError

        try:
            return self._single_point(atoms, sid, rundir / "gpaw.txt", settings, retry=False)
        except KohnShamConvergenceError:
            first = f"SCF not converged in {settings.maxiter} iterations"
        retry = calculator_parameters(atoms.get_chemical_symbols(), settings, retry=True)
        try:
            return self._single_point(atoms, sid, rundir / "gpaw-retry.txt", settings, retry=True)
        except KohnShamConvergenceError:
            return Label(sid, "failed", reason=(
                f"SCF not converged in {retry['maxiter']} iterations after a retry with mixer "
                f"{retry['mixer']} ({first} with the first mixer; logs in {rundir})"
            ))

    def _single_point(self, atoms, sid: int, txt: Path, settings: GPAWSettings, retry: bool) -> Label:
        from gpaw import GPAW, PW

        work = atoms.copy()
        if settings.reduce_cell and work.pbc.all():
            work = reduced_cell_copy(work)
        symbols = work.get_chemical_symbols()
        work.set_initial_magnetic_moments(initial_magmoms(symbols, settings.magmom))
        work.calc = GPAW(mode=PW(settings.ecut), txt=str(txt),
                         **calculator_parameters(symbols, settings, retry=retry))
        energy = work.get_potential_energy(force_consistent=True)
        forces = work.get_forces()
        stress = work.get_stress(voigt=True) if settings.stress else None
        magmoms = work.calc.get_magnetic_moments()
        return Label(
            structure_id=sid,
            status="ok",
            energy=float(energy),
            forces=tuple(tuple(float(c) for c in f) for f in forces),
            stress=None if stress is None else tuple(float(s) for s in stress),
            magmoms=tuple(float(m) for m in magmoms),
        )
