"""The one result type every potential returns and every front end reads, units on each field.

Units: energies eV, positions and cell Å (cell rows are lattice vectors), forces eV/Å,
virial eV with W = -V·σ (σ the ASE stress), stress eV/Å³ in Voigt order xx yy zz yz xz xy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import postprocess


@dataclass
class Evaluation:
    energy: float                      # eV, includes the one-body E0 terms
    forces: np.ndarray                 # (N, 3) eV/Å
    virial: np.ndarray                 # (3, 3) eV, symmetric, W = -Σ_ij ∂E_i/∂R_ij ⊗ R_ij
    energies: np.ndarray               # (N,) eV, per-atom site energies, sum to `energy`
    energy_committee: np.ndarray | None = None   # (K,) eV, one energy per committee member
    forces_committee: np.ndarray | None = None   # (K, N, 3) eV/Å, only when asked for
    pairs: int = 0                     # neighbour pairs (i, j, image) within rcut: the work done
    gamma: np.ndarray | None = None    # (N,) extrapolation grade γ per atom (dimensionless, see
                                       # `uncertainty`), only when asked for
    energies_committee: np.ndarray | None = None  # (K, N) eV, every member's site energies
    descriptors: np.ndarray | None = None   # (N, max L) `SitePotential.descriptors` rows, only
                                            # when asked for (`evaluate_many(descriptors=True)`)

    def stress(self, cell: np.ndarray) -> np.ndarray:
        """ASE stress σ = -W/V in Voigt order (xx, yy, zz, yz, xz, xy), eV/Å³."""
        return postprocess.stress(self.virial, cell)

    def periodic_stress(self, cell, pbc) -> np.ndarray | None:
        """The stress where it is defined (3-D periodic cell, non-zero volume), else None."""
        return postprocess.periodic_stress(self.virial, cell, pbc)

    @property
    def energy_std(self) -> float | None:
        """Committee spread of the energy, eV (`postprocess.committee_spread`); None without one."""
        ec = self.energy_committee
        if ec is None:
            return None
        if type(ec) is np.ndarray and ec.dtype == np.float64 and ec.ndim == 1 and len(ec):
            return postprocess.energy_spread(ec)     # the same bits, faster
        return float(postprocess.committee_spread(ec))

    @property
    def max_gamma(self) -> float | None:
        """The largest γ of the structure (0 without atoms); None unless γ was asked for."""
        if self.gamma is None:
            return None
        return float(self.gamma.max()) if len(self.gamma) else 0.0

    @property
    def energies_std(self) -> np.ndarray | None:
        """Committee spread of each site energy, (N,) eV; None unless asked for."""
        if self.energies_committee is None:
            return None
        return postprocess.committee_spread(self.energies_committee)

    @property
    def forces_std(self) -> np.ndarray | None:
        """Committee spread of the forces, (N, 3) eV/Å; None unless committee forces were asked for."""
        if self.forces_committee is None:
            return None
        return postprocess.committee_spread(self.forces_committee)
