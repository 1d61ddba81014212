"""Checks of a campaign that need its structures or DeePMD-kit, before any state or process
exists.

``build_structure`` makes the starting structure of a ``[[structures]]`` entry (built in
code or read from a file). ``preflight`` builds every one and refuses, naming the user's
entry (``structures[i].file``), a file that is missing, empty, binary or unreadable, and a
structure that is not physical: no atoms or too many, NaN or infinite coordinates, not
periodic, a cell of (near) zero volume, or one that the loop's own structure filter
(``remote_al.structures.check_structure`` with ``selection.min_distance_A``) would reject,
so that every frame made from it would be filtered out and nothing would train. It also
runs DeePMD-kit's argument checker on the input.json a member would train with, so a bad
``[training.deepmd]`` override is refused with DeePMD-kit's message.
"""

from __future__ import annotations

import logging

import numpy as np

from driver.config import entry_field
from driver.config_models import MAX_ATOMS, MIN_VOLUME_PER_ATOM_A3, CampaignConfig
from driver.errors import ConfigError

log = logging.getLogger(__name__)

# Initial frames checked per structure against the filter (the first that passes ends it).
_INITIAL_FRAMES_CHECKED = 64


def build_structure(spec):
    """The starting structure of a structure spec (built in code or read from a file)."""
    from driver.config import spec_metals
    from remote_al.orderings import layered_structure
    from remote_al.structures import read_structure_file

    if spec.generator == "file":
        return read_structure_file(spec.file)
    return layered_structure(spec_metals(spec), spec.li_content, tuple(spec.supercell), ordering=spec.ordering, seed=spec.seed)


def preflight(cfg: CampaignConfig) -> list[str]:
    """Checks that need the structures themselves and DeePMD-kit; raises ConfigError
    before any work. Returns notes on checks that could not run here (also logged)."""
    rng = np.random.default_rng(cfg.campaign.seed)
    for i, spec in enumerate(cfg.structures):
        atoms = _starting_structure(cfg, spec, i)
        _check_initial_frames(cfg, spec, atoms, rng)
    notes = [note for note in (check_deepmd_overrides(cfg),) if note]
    for note in notes:
        log.warning(note)
    return notes


def _starting_structure(cfg: CampaignConfig, spec, i: int):
    """The built structure of ``spec``, checked; ConfigError naming the user's entry."""
    from pathlib import Path

    from remote_al.structures import check_structure, min_distance

    is_file = spec.generator == "file"
    where = entry_field(spec, i, "file" if is_file else "")
    if is_file:
        path = Path(spec.file)
        if not path.exists():
            raise ConfigError(where, f"structure file {path} not found",
                              "give a path relative to the campaign file, or an absolute one")
        if not path.is_file():
            raise ConfigError(where, f"{path} is not a file", "give a structure file (POSCAR, CIF, extxyz, ...)")
        if path.stat().st_size == 0:
            raise ConfigError(where, f"structure file {path} is empty", "give a structure file with atoms in it")
    try:
        atoms = build_structure(spec)
    except Exception as exc:  # ASE and pymatgen raise many types for a bad file
        if is_file and _is_binary(spec.file):
            raise ConfigError(where, f"{spec.file} is not a text structure file (it holds binary data)",
                              "give a POSCAR, CIF or extxyz file") from None
        problem = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        raise ConfigError(where, problem, "check the file's format and content" if is_file else
                          "check the entry's composition, supercell and ordering") from None

    name = spec.name
    if len(atoms) == 0:
        raise ConfigError(where, f"structure {name!r} has no atoms", "give a structure with atoms")
    if len(atoms) > MAX_ATOMS:
        raise ConfigError(where if is_file else entry_field(spec, i, "supercell"),
                          f"structure {name!r} has {len(atoms)} atoms, above the bound {MAX_ATOMS}",
                          "use a smaller cell")
    missing = sorted(set(atoms.get_chemical_symbols()) - set(cfg.campaign.type_map))
    if missing:
        raise ConfigError(
            "campaign.type_map",
            f"elements {missing} of structure {name!r} are missing from the type map",
            f"add them to campaign.type_map {list(cfg.campaign.type_map)}",
        )
    if not np.all(np.isfinite(atoms.get_positions())):
        raise ConfigError(where, f"structure {name!r} has NaN or infinite coordinates", "fix the coordinates")
    cell = np.asarray(atoms.cell.array, dtype=float)
    if not np.all(np.isfinite(cell)):
        raise ConfigError(where, f"the cell of {name!r} has NaN or infinite entries", "fix the lattice vectors")
    if not atoms.pbc.all():
        raise ConfigError(where, f"structure {name!r} is not periodic in all three directions",
                          "give a bulk cell (POSCAR, CIF, or extxyz with a Lattice and pbc)")
    volume = abs(float(np.linalg.det(cell)))
    if volume / len(atoms) < MIN_VOLUME_PER_ATOM_A3:
        raise ConfigError(where, f"the cell of {name!r} has a volume of {volume:.3g} A^3 "
                          f"({volume / len(atoms):.3g} A^3 per atom, below {MIN_VOLUME_PER_ATOM_A3}): "
                          "its lattice vectors are (nearly) coplanar", "fix the lattice vectors")
    min_d = cfg.selection.min_distance_A
    shape = check_structure(atoms, min_dist_A=0.0)
    if not shape.ok:
        raise ConfigError(where if is_file else entry_field(spec, i, "supercell"),
                          f"structure {name!r} fails the structure filter: {shape.reason}; every frame "
                          "made from it would be filtered out before labeling",
                          "fix the cell" if is_file else "choose a supercell with cell lengths in [2, 60] A")
    d = min_distance(atoms)
    if d < min_d:
        raise ConfigError(
            where if is_file else "selection.min_distance_A",
            f"structure {name!r} has atoms {d:.3f} A apart, below selection.min_distance_A = {min_d} A: "
            "the structure filter would remove every frame made from it",
            "fix the overlapping atoms in the file" if is_file else f"set selection.min_distance_A below {d:.2f}")
    return atoms


def _is_binary(path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start < len(head) - 4  # not just a character cut at the end of the block
    return False


def _check_initial_frames(cfg: CampaignConfig, spec, atoms, rng) -> None:
    """Round 0's rattled and strained copies of the structure pass the structure filter
    (at least one of them): else the campaign would start with no data for it."""
    from remote_al.structures import check_structure, initial_perturbations

    ini = cfg.initial
    n = min(ini.n_per_structure, _INITIAL_FRAMES_CHECKED)
    reason = ""
    for frame in initial_perturbations(atoms, n, ini.rattle_A, ini.strain, rng):
        result = check_structure(frame, min_dist_A=cfg.selection.min_distance_A)
        if result.ok:
            return
        reason = reason or result.reason
    raise ConfigError(
        "initial.rattle_A",
        f"every initial frame of structure {spec.name!r} fails the structure filter ({reason}): round 0 "
        "would have no data to train on",
        f"lower initial.rattle_A (now {ini.rattle_A}) or initial.strain (now {ini.strain}), or "
        f"selection.min_distance_A (now {cfg.selection.min_distance_A})")


def check_deepmd_overrides(cfg: CampaignConfig) -> str | None:
    """DeePMD-kit's own argument checker (``deepmd.utils.argcheck.normalize``, after its
    input-version update, as ``dp train`` does) on the input.json a member trains with:
    ``remote_al.deepmd_input.deepmd_input`` with the campaign's ``[training.deepmd]``
    overrides, for generation 0 and, when generations continue, for a continued one
    (``numb_steps_continue``, ``continue_prefactors``, ``[training.deepmd_continue]``).
    ConfigError with DeePMD-kit's message, prefixed by the field. Returns a note (and checks nothing) when DeePMD-kit is not importable here."""
    try:
        from deepmd.utils.argcheck import normalize
        from deepmd.utils.compat import update_deepmd_input
    except ImportError as exc:
        return (f"note: [training.deepmd] not checked here: DeePMD-kit is not importable ({exc}); "
                "it is checked when training starts on the endpoint")
    from remote_al.deepmd_input import deepmd_input

    t = cfg.training
    valid = ["valid-systems"] if t.subset_fraction < 1.0 else []
    runs = [(t.numb_steps, False, "deepmd")]
    if t.continue_from_previous:
        runs.append((t.numb_steps_continue, True, "deepmd_continue" if t.deepmd_continue else "deepmd"))
    for steps, continued, key in runs:
        try:
            inp = deepmd_input(cfg.campaign.type_map, ["train-systems"], valid, steps,
                               cfg.campaign.seed * 1000 + 1, dict(t.deepmd), continued=continued,
                               continue_prefactors=t.continue_prefactors, continue_overrides=dict(t.deepmd_continue),
                               save_freq=t.save_freq)
            normalize(update_deepmd_input(inp, warning=False))
        except Exception as exc:  # dargs' ArgumentError and DeePMD-kit's ValueErrors, KeyErrors
            path = str(getattr(exc, "path", "") or "")
            field = f"training.{key}" + ("." + path.replace("/", ".") if path else "")
            raise ConfigError(field, f"DeePMD-kit's argument check: {exc}",
                              f"fix the override in [training.{key}] (DeePMD-kit's input reference: "
                              "`dp doc-train-input`)") from None
    return None
