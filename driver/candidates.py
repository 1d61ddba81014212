"""What a selection rule of ``driver.strategies`` takes (``Candidates``, checked on
construction) and returns (``Choice`` per chosen frame)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class SelectionInputError(ValueError):
    """Raised before selecting: the candidates' arrays do not fit together, or an option is invalid."""


@dataclass(frozen=True)
class Choice:
    index: int  # into the candidates
    reason: str


@dataclass(frozen=True)
class Candidates:
    """Per-frame inputs of a selection (``n`` frames), checked on construction."""

    uncertainty: np.ndarray  # (n,) force CI width, max over atoms, eV/A (or another per-frame score)
    features: np.ndarray | None = None  # (n, d)
    groups: tuple | None = None  # (n,) hashable condition labels
    atom_uncertainty: tuple | None = None  # n arrays of per-atom widths
    labeled_features: np.ndarray | None = None  # (m, d): frames already in the training set
    labeled_uncertainty: np.ndarray | None = None  # (m,) their uncertainty, for the scaled kernels

    def __post_init__(self):
        u = np.asarray(self.uncertainty, dtype=float).reshape(-1)
        object.__setattr__(self, "uncertainty", u)
        n = len(u)
        if self.features is not None:
            x = np.asarray(self.features, dtype=float)
            if x.ndim != 2 or len(x) != n:
                raise SelectionInputError(f"features must be ({n}, d), got shape {x.shape}")
            object.__setattr__(self, "features", x)
        if self.groups is not None:
            g = tuple(self.groups)
            if len(g) != n:
                raise SelectionInputError(f"groups must have {n} labels, got {len(g)}")
            object.__setattr__(self, "groups", g)
        if self.atom_uncertainty is not None and len(self.atom_uncertainty) != n:
            raise SelectionInputError(f"atom_uncertainty must have {n} arrays, got {len(self.atom_uncertainty)}")
        if self.labeled_features is not None:
            lx = np.asarray(self.labeled_features, dtype=float).reshape(len(self.labeled_features), -1)
            if self.features is None or lx.shape[1] != self.features.shape[1]:
                raise SelectionInputError("labeled_features need features of the same width")
            object.__setattr__(self, "labeled_features", lx)
            if self.labeled_uncertainty is not None:
                lu = np.asarray(self.labeled_uncertainty, dtype=float).reshape(-1)
                if len(lu) != len(lx):
                    raise SelectionInputError(f"labeled_uncertainty must have {len(lx)} values, got {len(lu)}")
                object.__setattr__(self, "labeled_uncertainty", lu)

    def __len__(self) -> int:
        return len(self.uncertainty)

    def subset(self, idx: np.ndarray) -> "Candidates":
        idx = np.asarray(idx, dtype=int)
        return Candidates(
            self.uncertainty[idx],
            None if self.features is None else self.features[idx],
            None if self.groups is None else tuple(self.groups[i] for i in idx),
            None if self.atom_uncertainty is None else tuple(self.atom_uncertainty[i] for i in idx),
            self.labeled_features,
            self.labeled_uncertainty,
        )
