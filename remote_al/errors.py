"""The base of every error remote-al raises on purpose, on either side.

``remote_al`` never imports ``driver``, so the base lives here; ``driver.errors`` builds the
driver's errors on it. Errors of the endpoint side, by when they happen:

- ``remote_al.labelers.base.LabelingError``: a labeler cannot run at all (settings,
  executable, pseudopotentials), raised before any calculation.
- ``remote_al.labelers.vasp_outputs.VaspOutputError``: a VASP run directory holds no
  complete ionic step.
- ``remote_al.training.TrainingError``: ``dp train`` or ``dp freeze`` failed, or left no
  checkpoint; carries the member's workdir.
- ``remote_al.composition.CompositionError``: a composition, Li content or supercell that
  cannot be built.

Each keeps the builtin base it had (``RuntimeError``, ``ValueError``), so code that catches
those still does.
"""

from __future__ import annotations


class RemoteALError(Exception):
    """Base of every error remote-al raises on purpose (anything else is a bug)."""
