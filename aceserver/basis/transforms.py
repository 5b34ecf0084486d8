"""Normalised generalised Agnesi transform r -> y in [-1, 1] (ace-spec §1.3).

    s = (r - rin)/(r0 - rin),  x = 1/(1 + a s^q/(1 + s^(q-p))),
    y = clamp(-1 + 2 (x - x(rin))/(x(rcut) - x(rin)), -1, 1),   x(rin) = 1,
with a chosen so that |dx/dr| peaks at r0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def agnesi_a(p: int, q: int) -> float:
    return (-2 * q + p * (-2 + 4 * q)) / (p + p**2 + q + q**2)


@dataclass(frozen=True)
class AgnesiTransform:
    p: int
    q: int
    r0: float
    rin: float
    rcut: float

    @property
    def a(self) -> float:
        return agnesi_a(self.p, self.q)

    def _x(self, r):
        s = (np.asarray(r, dtype=float) - self.rin) / (self.r0 - self.rin)
        s = np.maximum(s, 0.0)
        return 1.0 / (1.0 + self.a * s**self.q / (1.0 + s ** (self.q - self.p)))

    @property
    def x_cut(self) -> float:
        return float(self._x(self.rcut))

    def __call__(self, r):
        """y(r) for an array of distances r (Å)."""
        x = self._x(r)
        y = -1.0 + 2.0 * (x - 1.0) / (self.x_cut - 1.0)
        return np.clip(y, -1.0, 1.0)

    def params(self) -> np.ndarray:
        """The packed parameters the numba kernels read: (a, p, q, r0, rin, rcut, x_cut)."""
        return np.array([self.a, self.p, self.q, self.r0, self.rin, self.rcut, self.x_cut])
