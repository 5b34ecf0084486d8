"""The one evaluator interface that every front end (ASE calculator, HTTP, i-PI) calls.

Units: energies eV, positions and cell Å (cell rows are lattice vectors), forces eV/Å,
virial eV with W = -V·σ (σ the ASE stress), stress eV/Å³ in Voigt order xx yy zz yz xz xy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def volume(cell) -> float:
    """|det(cell)| in Å³ (a triple product in floats: np.linalg.det costs ~40 µs per call)."""
    (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = np.asarray(cell, dtype=float).tolist()
    return abs(a0 * (b1 * c2 - b2 * c1) - a1 * (b0 * c2 - b2 * c0) + a2 * (b0 * c1 - b1 * c0))


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
        v = volume(cell)
        if v <= 0.0:
            raise ValueError("stress needs a cell with non-zero volume")
        s = -self.virial / v
        return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
