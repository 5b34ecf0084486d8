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

Rows are made and used a chunk of atoms of one species at a time (`site_chunks`), so memory is
O(chunk · L + L²) whatever the structure's size, and each chunk costs one BLAS product.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

GAMMA_INTERPOLATION = 1.0     # γ at or below: inside the active set's span (interpolation)
GAMMA_RELIABLE_MAX = 5.0      # γ above: extrapolation the model should not be trusted with
CHUNK_VALUES = 1 << 22        # descriptor values per chunk of rows (32 MiB of float64)


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


def site_chunks(z: np.ndarray, n_species: int, width: int) -> Iterator[tuple[int, np.ndarray]]:
    """(species s, atom indices) covering every atom once: the atoms of each species in order, in
    chunks of at most CHUNK_VALUES // width atoms."""
    size = max(1, CHUNK_VALUES // max(1, width))
    for s in range(n_species):
        atoms = np.flatnonzero(z == s)
        for lo in range(0, len(atoms), size):
            yield s, atoms[lo:lo + size]


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
