"""Post-processing that every front end (ASE calculator, HTTP, i-PI, CLI) needs, defined once.

* Stress: ASE's σ = -W/V in eV/Å³, Voigt order xx yy zz yz xz xy, and only for cells periodic in
  all three directions with a non-zero volume (elsewhere a volume means nothing).
* Virial: W = -Σ_ij ∂E_i/∂R_ij ⊗ R_ij in eV, symmetric (`SitePotential.evaluate` symmetrises it).
* Committee spread: the population standard deviation of the K members' predictions,
  sqrt(Σ_k (x_k - x̄)² / K) (ddof 0: the spread of the committee as sampled, 0 for K = 1),
  in the members' units. HTTP's `energy_std`/`forces_std`, the ASE calculator's `energy_std` and
  i-PI's `committee_uncertainty` all use it.
"""
from __future__ import annotations

import numpy as np

from ..kernels.scatter import stress_voigt
from ..kernels.sums import spread

VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))   # xx yy zz yz xz xy
_VOIGT_I, _VOIGT_J = (np.array(k) for k in zip(*VOIGT))
COMMITTEE_DDOF = 0


def volume(cell) -> float:
    """|det(cell)| in Å³ (a triple product in floats: np.linalg.det costs ~40 µs per call)."""
    (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = np.asarray(cell, dtype=float).tolist()
    return abs(a0 * (b1 * c2 - b2 * c1) - a1 * (b0 * c2 - b2 * c0) + a2 * (b0 * c1 - b1 * c0))


def voigt(tensor) -> np.ndarray:
    """(3, 3) -> (6,) in Voigt order xx yy zz yz xz xy."""
    return np.asarray(tensor)[_VOIGT_I, _VOIGT_J]      # one gather (a copy), not six scalars


def has_stress(cell, pbc) -> bool:
    """Stress is defined for cells periodic in all three directions with a non-zero volume."""
    return cell is not None and bool(np.asarray(pbc).all()) and volume(cell) > 0.0


def stress(virial, cell) -> np.ndarray:
    """ASE stress σ = -W/V in Voigt order (xx, yy, zz, yz, xz, xy), eV/Å³."""
    v = volume(cell)
    if v <= 0.0:
        raise ValueError("stress needs a cell with non-zero volume")
    return voigt(-np.asarray(virial) / v)


def periodic_stress(virial, cell, pbc) -> np.ndarray | None:
    """`stress` where `has_stress` says it exists, else None (the volume computed once).
    float64 arrays (what `evaluate` and ASE hold) go through one kernel call with the same
    operations (`kernels.scatter.stress_voigt`); anything else through numpy."""
    if (type(virial) is np.ndarray and type(cell) is np.ndarray and type(pbc) is np.ndarray
            and virial.dtype == cell.dtype == np.float64 and virial.shape == cell.shape == (3, 3)
            and pbc.shape == (3,)):
        if not all(pbc.tolist()):       # ndarray.all() costs ~1 µs on 3 values
            return None
        sigma = stress_voigt(virial, cell)
        return sigma if len(sigma) else None
    if cell is None or not bool(np.asarray(pbc).all()):
        return None
    v = volume(cell)
    return voigt(-np.asarray(virial) / v) if v > 0.0 else None


def stresses(virials, cells, pbc) -> list:
    """`stress` of many structures at once, None where `has_stress` says there is none:
    virials (S, 3, 3), cells (S, 3, 3), pbc (S, 3); the same operations in the same order as
    one call each (elementwise), so the same bits."""
    (a0, a1, a2), (b0, b1, b2), (c0, c1, c2) = np.moveaxis(np.asarray(cells, dtype=float), 0, -1)
    v = np.abs(a0 * (b1 * c2 - b2 * c1) - a1 * (b0 * c2 - b2 * c0) + a2 * (b0 * c1 - b1 * c0))
    ok = np.all(pbc, axis=1) & (v > 0.0)
    i, j = np.array(VOIGT).T
    sigma = (-np.asarray(virials) / np.where(ok, v, 1.0)[:, None, None])[:, i, j]
    return [s if k else None for s, k in zip(sigma, ok.tolist())]


def committee_spread(values, axis: int = 0):
    """Standard deviation over the committee axis (ddof 0, see the module docstring)."""
    return np.std(np.asarray(values), axis=axis, ddof=COMMITTEE_DDOF)


def energy_spread(members: np.ndarray) -> float:
    """`committee_spread` of a float64 vector (K,), as a float: np.std's own steps and sums in one
    kernel (`kernels.sums.spread`), so the same bits, ~0.5 µs instead of np.std's ~15 µs."""
    return spread(np.ascontiguousarray(members))
