"""Per-atom uncertainty, defined once for every front end: the extrapolation grade γ and the rows
it is computed from.

γ (pacemaker's D-optimality extrapolation grade): for an atom whose descriptor row is b (the L
values its site energy is linear in, `SitePotential.descriptors`) and the inverse A⁻¹ of its
species' active set (L training rows chosen by MaxVol, `fitting.active_set`),

    γ = max_k |(b A⁻¹)_k|,

the largest factor by which putting b into the active set in place of one of its rows would grow
|det A|. γ ≤ 1 interpolates the training data; 1 < γ ≤ 5 is mild extrapolation, γ > 5 unreliable
(pacemaker's thresholds, GAMMA_INTERPOLATION and GAMMA_RELIABLE_MAX). γ is dimensionless and
unchanged by any invertible change of the columns (B M (A M)⁻¹ = B A⁻¹).

Rows are made and used one block of atoms at a time (`SiteUncertainty.add`; the ace1 site pass
writes them from the A and AA it has anyway), so memory is O(block · L + L²) whatever the
structure's size, and each block costs one BLAS product per species. Called from the main
thread (library use), a block's product runs on one BLAS thread unless the site pass ran on numba's
threads and the product is large (at least BLAS_THREADS_MIN_FLOP): threaded BLAS on a few hundred
rows costs more in start-up and waiting than it saves, and on a busy machine far more (measured
18-54 ms instead of 0.3-1 ms for 64 x 223 by 223 x 223). In any other thread the products run with
the process's BLAS thread count as it is: OpenBLAS has one count per process, and limits entered
around calls in concurrent threads undo each other (`one_blas_thread`); servers set the count once
at start (`aceserver serve --blas-threads`, 1 by default).
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController

GAMMA_INTERPOLATION = 1.0     # γ at or below: inside the active set's span (interpolation)
GAMMA_RELIABLE_MAX = 5.0      # γ above: extrapolation the model should not be trusted with
BLAS_THREADS_MIN_FLOP = 1e8   # smaller products run on one BLAS thread (~5 ms on one core)


@cache
def _blas() -> ThreadpoolController:
    """One controller per process: making one inspects the loaded libraries (~ms); limiting
    through it costs ~8 µs."""
    return ThreadpoolController()


def one_blas_thread(wanted: bool = True):
    """A context that runs BLAS on one thread while it is on, if `wanted` and this is the main
    thread; else it changes nothing. The limit is the process's (OpenBLAS keeps one thread count):
    entered and left in concurrent threads, such limits restore each other's saved counts, so a cap
    is lost part-way and the process can be left with another count (benchmarks/blas_threads_check.py);
    only one main thread exists, so its limits never overlap one another."""
    if wanted and threading.current_thread() is threading.main_thread():
        return _blas().limit(limits=1, user_api="blas")
    return contextlib.nullcontext()


@dataclass
class ActiveSetInverse:
    """A⁻¹ of the active set of each element (what pacemaker's `.asi` holds), for one model.

    inverses      {element symbol: (L_el, L_el) float64}, columns in the model's descriptor order
    model_sha256  the sha256 of the model the active set was built for (None: not recorded)
    """
    inverses: dict[str, np.ndarray]
    model_sha256: str | None = None


def extrapolation_grade(B, A_inv) -> np.ndarray:
    """γ (n,) = max_k |(B A⁻¹)_k| for rows B (n, L) and the active-set inverse A_inv (L, L):
    one matrix product (BLAS), then a maximum along each row."""
    B = np.asarray(B, dtype=np.float64)
    if B.ndim == 1:
        B = B[None, :]
    if B.shape[0] == 0:
        return np.zeros(0)
    return np.abs(B @ np.asarray(A_inv, dtype=np.float64)).max(axis=1)


class SiteUncertainty:
    """Collects, block by block of descriptor rows, each atom's γ (from the inverses, one per
    species index; None: not asked for) and every committee member's site energy E0 + D·W_k
    (weights (K, nz, L); None: not asked for). Results in `gamma` (N,) and `energies` (K, N) eV."""

    def __init__(self, z: np.ndarray, sizes: list[int], inverses=None, weights=None, e0=None,
                 threaded: bool = False):
        self.z, self.sizes, self.inverses, self.threaded = z, sizes, inverses, threaded
        self.weights, self.e0 = weights, e0
        self.gamma = np.zeros(len(z)) if inverses is not None else None
        self.energies = np.empty((len(weights), len(z))) if weights is not None else None

    def add(self, start: int, stop: int, rows: np.ndarray) -> None:
        """Rows (stop - start, width) of atoms start..stop-1."""
        zb = self.z[start:stop]
        species = np.flatnonzero(np.bincount(zb, minlength=len(self.sizes)))  # no sort
        for s in species:
            if len(species) == 1:
                atoms, D = slice(start, stop), rows
            else:
                mask = zb == s
                atoms, D = start + np.flatnonzero(mask), rows[mask]
            D = D[:, :self.sizes[s]]
            flop = 2.0 * D.shape[0] * D.shape[1] * D.shape[1]
            with one_blas_thread(not self.threaded or flop < BLAS_THREADS_MIN_FLOP):
                self._products(atoms, s, D)

    def _products(self, atoms, s: int, D: np.ndarray) -> None:
        if self.gamma is not None:
            self.gamma[atoms] = extrapolation_grade(D, self.inverses[s])
        if self.energies is not None:
            self.energies[:, atoms] = self.weights[:, s, :D.shape[1]] @ D.T + self.e0[s]


def checked_inverses(inverses: dict, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """The inverses as C-contiguous float64, after checking that they name only the model's
    elements, are square of the element's descriptor size and finite (ValueError otherwise)."""
    unknown = sorted(set(inverses) - set(sizes))
    if unknown:
        raise ValueError(f"active set for elements {unknown} that the model does not have "
                         f"(it has {sorted(sizes)})")
    out = {}
    for el, a in inverses.items():
        a = np.ascontiguousarray(a, dtype=np.float64)
        if a.shape != (sizes[el], sizes[el]):
            raise ValueError(f"active set of {el} has shape {a.shape}; the model's {el} "
                             f"descriptors need ({sizes[el]}, {sizes[el]})")
        if not np.isfinite(a).all():
            raise ValueError(f"active set of {el} holds NaN or infinite values")
        out[el] = a
    return out
