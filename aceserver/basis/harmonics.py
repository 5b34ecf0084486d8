"""Real <-> complex spherical harmonics, the one conversion (construction time, numpy).

Real harmonics R_lm: SpheriCart's, L²-normalised, without the Condon-Shortley phase (the kernels'
`ylm`). Complex harmonics Y_lm: L²-normalised, with that phase. For m > 0:

    R_l0 = Y_l0,   R_lm = ((-1)^m Y_lm + Y_l,-m)/√2,   R_l,-m = i (Y_l,-m - (-1)^m Y_lm)/√2,

i.e. R = C Y with C unitary (`real_from_complex`), and Y = C^H R (`complex_to_real`). pacemaker's
harmonics are Y^ACE_lm = √(4π) Y_lm (`SQRT_4PI`). Every entry of C is independent of l, so one
row of C (or C^H) serves every l >= |m|.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

SQRT_4PI = math.sqrt(4.0 * math.pi)     # Y^ACE_lm = √(4π) Y_lm (pacemaker), so Y^ACE_00 = 1


@lru_cache(maxsize=None)
def real_from_complex(l: int) -> np.ndarray:
    """C, (2l+1, 2l+1) complex, indexed [m+l, μ+l]: R_m = Σ_μ C[m+l, μ+l] Y_μ."""
    C = np.zeros((2 * l + 1, 2 * l + 1), dtype=complex)
    C[l, l] = 1.0
    s = 1.0 / math.sqrt(2.0)
    for m in range(1, l + 1):
        sign = (-1) ** m
        C[l + m, l + m] = sign * s
        C[l + m, l - m] = s
        C[l - m, l - m] = 1j * s
        C[l - m, l + m] = -1j * sign * s
    C.setflags(write=False)               # cached: shared by every caller
    return C


@lru_cache(maxsize=None)
def complex_to_real(l: int) -> np.ndarray:
    """D with Y^complex_m = Σ_μ D[m+l, μ+l] R_μ, R the real SpheriCart harmonics (no Condon-Shortley
    phase): R_0 = Y_0, R_m = ((-1)^m Y_m + Y_-m)/√2, R_-m = i (Y_-m - (-1)^m Y_m)/√2 for m > 0."""
    return real_from_complex(l).conj().T     # C is unitary, so Y = C^H R


def real_to_complex(l: int, m: int) -> list[tuple[int, complex]]:
    """R_lm = Σ (coefficient · Y^ACE_lμ) / √(4π): the list of (μ, coefficient), μ = |m| first."""
    C = real_from_complex(l)
    k = abs(m)
    mus = (0,) if m == 0 else (k, -k)
    return [(mu, complex(C[l + m, l + mu])) for mu in mus]


def complex_weights(m) -> tuple[np.ndarray, np.ndarray]:
    """(w_cos, w_sin) with Y_lm = w_cos R_l|m| + i w_sin R_l,-|m| for integer m (arrays): the two
    nonzero entries of row m of `complex_to_real`, real and imaginary (w_sin = 0 at m = 0)."""
    m = np.asarray(m, dtype=np.int64)
    L = int(np.abs(m).max(initial=0))
    D = complex_to_real(L)
    am = np.abs(m)
    w_cos = D[L + m, L + am].real
    w_sin = np.where(m == 0, 0.0, D[L + m, L - am].imag)
    return w_cos, w_sin
