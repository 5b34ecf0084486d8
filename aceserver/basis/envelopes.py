"""Radial envelopes (ace-spec §1.4)."""
from __future__ import annotations

import numpy as np


def envelope_y(y):
    """Many-body envelope (1 - y²)² on the transformed coordinate, zero outside (-1, 1)."""
    y = np.asarray(y, dtype=float)
    return np.where(np.abs(y) < 1.0, (1.0 - y**2) ** 2, 0.0)


def envelope_pair_ace1(r, r0: float, rcut: float, p: int = 2):
    """ACE1 pair envelope s^-p - sc^-p + p sc^(-p-1) (s - sc), s = r/r0, zero beyond rcut.
    Value and slope vanish at rcut; it diverges like r^-p at 0 (room for a repulsive core)."""
    r = np.asarray(r, dtype=float)
    s, sc = r / r0, rcut / r0
    with np.errstate(divide="ignore"):
        f = s ** (-p) - sc ** (-p) + p * sc ** (-p - 1) * (s - sc)
    return np.where(r <= rcut, f, 0.0)
