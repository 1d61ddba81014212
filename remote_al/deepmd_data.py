"""Labeled frames <-> DeePMD-kit's deepmd/npy format, and lcurve.out parsing.

A deepmd/npy *system* is one directory with ``type.raw``, ``type_map.raw`` and
``set.000/{coord,box,energy,force[,virial]}.npy``; all its frames share the same atoms in
the same order. Frames are grouped into systems by their species sequence; a system's
directory is named by composition and cell, e.g. ``Li3Ni4O8-5.7x5.7x14.2``
(:func:`system_names`).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def frame_arrays(atoms) -> dict:
    """Energy, forces and (if known) virial of a labeled Atoms."""
    calc = atoms.calc
    if calc is None or "energy" not in calc.results or "forces" not in calc.results:
        raise ValueError("frame has no energy/forces labels")
    out = {
        "energy": float(calc.results["energy"]),
        "forces": np.asarray(calc.results["forces"], dtype=float).reshape(-1, 3),
    }
    if "stress" in calc.results and calc.results["stress"] is not None:
        from ase.stress import voigt_6_to_full_3x3_stress

        s = np.asarray(calc.results["stress"], dtype=float)
        full = voigt_6_to_full_3x3_stress(s) if s.shape == (6,) else s.reshape(3, 3)
        out["virial"] = -full * atoms.get_volume()
    return out


def legacy_system_name(symbols: Sequence[str]) -> str:
    """The name systems had before they were named by cell (``Li3Ni4O8-cf324732``: element
    counts and a digest of the atom order); campaigns exported that way keep it."""
    digest = hashlib.sha1(" ".join(symbols).encode()).hexdigest()[:8]
    return _counts(symbols) + "-" + digest


def _counts(symbols: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for s in symbols:
        counts[s] = counts.get(s, 0) + 1
    return "".join(f"{el}{n}" for el, n in counts.items())


def system_label(atoms) -> str:
    """Composition and cell of a frame: ``Li3Ni4O8-5.7x5.7x14.2`` (element counts in atom
    order, then the lattice lengths a x b x c in Å to 0.1)."""
    lengths = atoms.cell.lengths()
    return _counts(atoms.get_chemical_symbols()) + "-" + "x".join(f"{v:.1f}" for v in lengths)


def system_names(groups: Mapping[tuple[str, ...], Sequence]) -> dict[tuple[str, ...], str]:
    """A directory name for each deepmd/npy system (frames grouped by atom order): the
    :func:`system_label` of its first frame; atom orders that share a label get ``-2``,
    ``-3``, ... in the sorted order of their species. The same groups always get the same
    names."""
    names: dict[tuple[str, ...], str] = {}
    taken: dict[str, int] = {}
    for symbols in sorted(groups):
        label = system_label(groups[symbols][0])
        taken[label] = taken.get(label, 0) + 1
        names[symbols] = label if taken[label] == 1 else f"{label}-{taken[label]}"
    return names


def group_frames(frames: Sequence) -> dict[tuple[str, ...], list]:
    """Frames by their species sequence (one deepmd/npy system each), in frame order."""
    groups: dict[tuple, list] = defaultdict(list)
    for atoms in frames:
        groups[tuple(atoms.get_chemical_symbols())].append(atoms)
    return dict(groups)


def write_systems(frames: Sequence, outdir: str | Path, type_map: Sequence[str],
                  names: Mapping[tuple[str, ...], str] | None = None) -> list[str]:
    """Write labeled frames as deepmd/npy systems under ``outdir``; return system paths.

    Systems are named by :func:`system_names` unless ``names`` (species sequence -> name)
    is given. Raises ValueError naming the element if a frame holds an element not in
    ``type_map``.
    """
    outdir = Path(outdir)
    groups = group_frames(frames)
    names = dict(names) if names is not None else system_names(groups)
    index = {el: i for i, el in enumerate(type_map)}
    paths = []
    for symbols, group in sorted(groups.items()):
        missing = sorted(set(symbols) - set(index))
        if missing:
            raise ValueError(f"elements {missing} are not in the type map {list(type_map)}")
        sysdir = outdir / names[symbols]
        setdir = sysdir / "set.000"
        setdir.mkdir(parents=True, exist_ok=True)
        (sysdir / "type.raw").write_text("\n".join(str(index[s]) for s in symbols) + "\n")
        (sysdir / "type_map.raw").write_text("\n".join(type_map) + "\n")
        arrays = [frame_arrays(a) for a in group]
        np.save(setdir / "coord.npy", np.array([a.get_positions().reshape(-1) for a in group]))
        np.save(setdir / "box.npy", np.array([np.asarray(a.get_cell()).reshape(-1) for a in group]))
        np.save(setdir / "energy.npy", np.array([x["energy"] for x in arrays]))
        np.save(setdir / "force.npy", np.array([x["forces"].reshape(-1) for x in arrays]))
        if all("virial" in x for x in arrays):
            np.save(setdir / "virial.npy", np.array([x["virial"].reshape(-1) for x in arrays]))
        paths.append(str(sysdir))
    return paths


def read_system(sysdir: str | Path) -> dict:
    """Arrays of one deepmd/npy system (all sets concatenated)."""
    sysdir = Path(sysdir)
    types = np.loadtxt(sysdir / "type.raw", dtype=int, ndmin=1)
    type_map = (sysdir / "type_map.raw").read_text().split()
    data: dict[str, list] = defaultdict(list)
    for setdir in sorted(sysdir.glob("set.*")):
        for name in ("coord", "box", "energy", "force", "virial"):
            f = setdir / f"{name}.npy"
            if f.exists():
                data[name].append(np.load(f))
    out = {k: np.concatenate(v) for k, v in data.items()}
    out["types"] = types
    out["type_map"] = type_map
    return out


def subset_system(sysdir: str | Path, outdir: str | Path, keep: np.ndarray) -> str | None:
    """Copy the frames ``keep`` (indices) of a system into ``outdir``; None if empty."""
    keep = np.asarray(keep, dtype=int)
    if keep.size == 0:
        return None
    sysdir, outdir = Path(sysdir), Path(outdir)
    data = read_system(sysdir)
    setdir = outdir / "set.000"
    setdir.mkdir(parents=True, exist_ok=True)
    (outdir / "type.raw").write_text((sysdir / "type.raw").read_text())
    (outdir / "type_map.raw").write_text((sysdir / "type_map.raw").read_text())
    for name in ("coord", "box", "energy", "force", "virial"):
        if name in data:
            np.save(setdir / f"{name}.npy", data[name][keep])
    return str(outdir)


def n_frames(sysdir: str | Path) -> int:
    return int(sum(np.load(p).shape[0] for p in Path(sysdir).glob("set.*/energy.npy")))


# ---------------------------------------------------------------------- lcurve
def parse_lcurve(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a DeePMD-kit lcurve.out by header name (``step``, ``rmse_e_trn``, ...).

    Works with and without validation columns; the header is the last comment line
    before the data.
    """
    header: list[str] | None = None
    rows = []
    for line in Path(path).read_text().splitlines():
        s = line.strip()
        if not s:
            continue
        if s.startswith("#"):
            names = s.lstrip("#").split()
            if names and names[0] == "step":
                header = names
            continue
        rows.append([float(x) for x in s.split()])
    if header is None:
        raise ValueError(f"{path}: no '# step ...' header line, not a DeePMD-kit lcurve file")
    if not rows:
        return {name: np.array([]) for name in header}
    arr = np.array(rows, dtype=float)
    if arr.shape[1] != len(header):
        raise ValueError(f"{path}: {arr.shape[1]} columns but header names {len(header)}")
    return {name: arr[:, i] for i, name in enumerate(header)}
