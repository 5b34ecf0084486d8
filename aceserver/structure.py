"""Validation of a structure before evaluation: every problem gets an ACEInputError naming the
field, so front ends can answer 4xx / a clean error instead of crashing or returning garbage."""
from __future__ import annotations

import numpy as np
from ase.data import chemical_symbols

from .errors import ACEInputError, UnknownElementError

MIN_DISTANCE = 1e-4   # Å; closer pairs are "atoms on top of each other"
MAX_COORDINATE = 1e8  # Å; beyond this positions or cell entries are not a structure (units?)


def same_array(a, b) -> bool:
    """Exactly equal arrays (a bytes compare: several times cheaper than numpy's reductions on
    the small arrays of one structure)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def species_lookup(elements) -> np.ndarray:
    """Array over atomic numbers 0..118 giving the model's species index, -1 when absent."""
    table = -np.ones(len(chemical_symbols), dtype=np.int64)
    for k, sym in enumerate(elements):
        table[chemical_symbols.index(sym)] = k
    return table


def as_given(numbers, positions, cell, pbc) -> bool:
    """Arrays that need no conversion (what ASE holds): C-contiguous int64 numbers (N,), float64
    positions (N, 3) and cell (3, 3), bool pbc (3,)."""
    return (type(numbers) is np.ndarray and numbers.dtype == np.int64 and numbers.ndim == 1
            and type(positions) is np.ndarray and positions.dtype == np.float64
            and positions.shape == (numbers.shape[0], 3) and positions.flags.c_contiguous
            and type(cell) is np.ndarray and cell.dtype == np.float64 and cell.shape == (3, 3)
            and cell.flags.c_contiguous and type(pbc) is np.ndarray and pbc.dtype == np.bool_
            and pbc.shape == (3,))


def prepare(numbers, positions, cell, pbc, lookup: np.ndarray, elements):
    """Checked, contiguous float64/int64 arrays: (species index per atom, positions, cell, pbc)."""
    if as_given(numbers, positions, cell, pbc):
        # the usual call (an ASE Atoms' arrays): the checks below without the conversions
        n = numbers.shape[0]
        if (n and not float(np.abs(positions).max()) <= MAX_COORDINATE) or \
                not float(np.abs(cell).max()) <= MAX_COORDINATE:
            return _prepare(numbers, positions, cell, pbc, lookup, elements)   # names the problem
        if n and not 0 <= int(numbers.min()) <= int(numbers.max()) < len(lookup):
            return _prepare(numbers, positions, cell, pbc, lookup, elements)
        z = lookup[numbers]
        if n and int(z.min()) < 0:
            return _prepare(numbers, positions, cell, pbc, lookup, elements)
        return z, positions, cell, pbc.copy()
    return _prepare(numbers, positions, cell, pbc, lookup, elements)


def _prepare(numbers, positions, cell, pbc, lookup: np.ndarray, elements):
    try:
        numbers = np.asarray(numbers)
        positions = np.asarray(positions, dtype=np.float64)
        cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64)
        pbc = np.broadcast_to(np.asarray(False if pbc is None else pbc, dtype=bool), (3,)).copy()
    except (TypeError, ValueError) as err:
        raise ACEInputError(f"structure arrays could not be read: {err}") from None
    if numbers.ndim != 1 or not np.issubdtype(numbers.dtype, np.integer):
        raise ACEInputError(f"numbers must be a 1-d array of integer atomic numbers, "
                            f"got shape {numbers.shape} and dtype {numbers.dtype}", "numbers")
    n = numbers.shape[0]
    if positions.shape != (n, 3):
        raise ACEInputError(f"positions must have shape ({n}, 3) for {n} atoms, "
                            f"got {positions.shape}", "positions")
    if cell.shape != (3, 3):
        raise ACEInputError(f"cell must be 3x3 (rows are lattice vectors), got {cell.shape}", "cell")
    # one reduction each for the usual case; the detailed checks only when something is off
    big = float(np.abs(positions).max()) if n else 0.0
    if not big <= MAX_COORDINATE:                  # NaN compares false
        if not np.all(np.isfinite(positions)):
            bad = int(np.flatnonzero(~np.isfinite(positions).all(axis=1))[0])
            raise ACEInputError(f"positions contain NaN or inf (first at atom {bad})", "positions")
        raise ACEInputError(f"positions exceed {MAX_COORDINATE:g} Å in magnitude (are they in Å?)",
                            "positions")
    big = float(np.abs(cell).max())
    if not big <= MAX_COORDINATE:
        if not np.all(np.isfinite(cell)):
            raise ACEInputError("cell contains NaN or inf", "cell")
        raise ACEInputError(f"cell entries exceed {MAX_COORDINATE:g} Å in magnitude", "cell")
    out_of_range = (numbers < 0) | (numbers >= len(lookup))
    if out_of_range.any():
        raise UnknownElementError(f"invalid atomic number {int(numbers[out_of_range][0])}", "numbers")
    z = lookup[numbers]
    if (z < 0).any():
        missing = sorted({chemical_symbols[k] for k in numbers[z < 0]})
        raise UnknownElementError(f"element(s) {', '.join(missing)} not in the model "
                                  f"(it knows {', '.join(elements)})", "numbers")
    return (np.ascontiguousarray(z), np.ascontiguousarray(positions), np.ascontiguousarray(cell),
            pbc)
