"""Checks of a campaign that need its structures, before any state or process exists.

``build_structure`` makes the starting structure of a ``[[structures]]`` entry (built in
code or read from a file); ``preflight`` builds every one and raises ``ConfigError`` naming
the entry when one cannot be used.
"""

from __future__ import annotations

from driver.config import CampaignConfig


def build_structure(spec):
    """The starting structure of a structure spec (built in code or read from a file)."""
    from driver.config import spec_metals
    from remote_al.composition import layered_structure
    from remote_al.structures import read_structure_file

    if spec.generator == "file":
        return read_structure_file(spec.file)
    return layered_structure(spec_metals(spec), spec.li_content, tuple(spec.supercell), ordering=spec.ordering, seed=spec.seed)


def preflight(cfg: CampaignConfig) -> None:
    """Checks that need the structures themselves; raises ConfigError before any work."""
    from driver.errors import ConfigError

    for i, spec in enumerate(cfg.structures):
        where = f"structures[{i}]" + (".file" if spec.generator == "file" else "")
        try:
            atoms = build_structure(spec)
        except ValueError as exc:
            raise ConfigError(where, str(exc)) from exc
        missing = sorted(set(atoms.get_chemical_symbols()) - set(cfg.campaign.type_map))
        if missing:
            raise ConfigError(
                "campaign.type_map",
                f"elements {missing} of structure {spec.name!r} are missing from the type map",
                f"add them to campaign.type_map {list(cfg.campaign.type_map)}",
            )
        if len(atoms) == 0:
            raise ConfigError(where, f"structure {spec.name!r} has no atoms")
