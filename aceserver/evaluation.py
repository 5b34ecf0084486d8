"""The one evaluator interface that every front end (ASE calculator, HTTP, i-PI) calls.

Units: energies eV, positions and cell Å (cell rows are lattice vectors), forces eV/Å,
virial eV with W = -V·σ (σ the ASE stress), stress eV/Å³ in Voigt order xx yy zz yz xz xy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Evaluation:
    energy: float                      # eV, includes the one-body E0 terms
    forces: np.ndarray                 # (N, 3) eV/Å
    virial: np.ndarray                 # (3, 3) eV, symmetric, W = -Σ_ij ∂E_i/∂R_ij ⊗ R_ij
    energies: np.ndarray               # (N,) eV, per-atom site energies, sum to `energy`
    energy_committee: np.ndarray | None = None   # (K,) eV, one energy per committee member
    forces_committee: np.ndarray | None = None   # (K, N, 3) eV/Å, only when asked for

    def stress(self, cell: np.ndarray) -> np.ndarray:
        """ASE stress σ = -W/V in Voigt order (xx, yy, zz, yz, xz, xy), eV/Å³."""
        volume = abs(np.linalg.det(np.asarray(cell, dtype=float)))
        if volume <= 0.0:
            raise ValueError("stress needs a cell with non-zero volume")
        s = -self.virial / volume
        return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
