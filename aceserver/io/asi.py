"""pacemaker's active-set inverse file (`.asi`): a numpy `.npz` archive (`np.savez`) holding one
square float array A⁻¹ (L_s × L_s) per species s, keyed by the element symbol ("Si", "Ti", ...).

`read` loads with allow_pickle=False (an archive holding object arrays is refused, never
unpickled) and checks every array: a known-looking element symbol as key, 2-D, square, non-empty,
real and finite. Problems raise `ModelFileError` naming the file and the key.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from . import npz

_SYMBOL = re.compile(r"^[A-Z][a-z]{0,2}$")


def _check(path, key: str, a: np.ndarray) -> np.ndarray:
    if not _SYMBOL.match(key):
        raise ModelFileError(f"{path}: key {key!r} is not an element symbol")
    if a.dtype.kind not in "fi":
        raise ModelFileError(f"{path}: array {key!r} has dtype {a.dtype}; expected real numbers")
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ModelFileError(f"{path}: array {key!r} has shape {a.shape}; an active-set inverse "
                             "is square (L × L, L = the species' number of basis functions)")
    if not np.isfinite(a).all():
        raise ModelFileError(f"{path}: array {key!r} holds NaN or infinite values")
    return a


def read(path) -> dict[str, np.ndarray]:
    """{element symbol: A⁻¹ (L, L) float64} from an `.asi` file."""
    path = Path(path)
    out = {key: _check(path, key, a).astype(np.float64, copy=False)
           for key, a in npz.read_arrays(path, ".asi").items()}
    if not out:
        raise ModelFileError(f"{path} holds no active-set arrays")
    return out


def write(path, inverses: dict[str, np.ndarray]) -> None:
    """Write {element symbol: A⁻¹ (L, L)} as pacemaker does (`np.savez`, uncompressed). The arrays
    are checked as `read` checks them. The path is used as given (np.savez would add `.npz` to a
    name without it, so we write through an open file)."""
    if not inverses:
        raise ModelFileError("an .asi file needs at least one species")
    arrays = {k: _check(path, k, np.asarray(v)) for k, v in inverses.items()}
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
