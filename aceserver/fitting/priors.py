"""Smoothness priors, as ACEpotentials.jl ``src/models/smoothness_priors.jl`` (ace-spec §4.2).

Each parameter k carries a label: the list of (n, l) one-particle indices of its basis function
(pair functions carry [(n, 0)]). The prior is diagonal, P = diag(γ), and the regression is done in
c̃ = P c, so that an isotropic prior on c̃ means c_k ~ N(0, σ₀²/γ_k²):

    algebraic   (p = 4, wl = 2/3, wn = 1):   γ = Σ_t [ (l_t/wl)^p + (n_t/wn)^p ]
    exponential (wl = 2/3, wn = 1):          γ = exp( Σ_t [ l_t/wl + n_t/wn ] )
    gaussian    (wl = wn = 1/√2):            γ = exp( Σ_t [ (l_t/wl)² + (n_t/wn)² ] )
    none:                                    γ = 1
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Labels = Sequence[Sequence[tuple[int, int]]]


def _check(labels: Labels):
    if len(labels) == 0:
        raise ValueError("no basis labels")
    for k, bb in enumerate(labels):
        if len(bb) == 0:
            raise ValueError(f"basis label {k} is empty")


def algebraic_prior(labels: Labels, p: float = 4, wl: float = 2 / 3, wn: float = 1.0) -> np.ndarray:
    _check(labels)
    return np.array([sum((l / wl) ** p + (n / wn) ** p for (n, l) in bb) for bb in labels], dtype=float)


def exponential_prior(labels: Labels, wl: float = 2 / 3, wn: float = 1.0) -> np.ndarray:
    _check(labels)
    return np.exp(np.array([sum(l / wl + n / wn for (n, l) in bb) for bb in labels], dtype=float))


def gaussian_prior(labels: Labels, wl: float = 1 / math.sqrt(2), wn: float = 1 / math.sqrt(2)) -> np.ndarray:
    _check(labels)
    return np.exp(np.array([sum((l / wl) ** 2 + (n / wn) ** 2 for (n, l) in bb) for bb in labels],
                           dtype=float))


def no_prior(labels: Labels) -> np.ndarray:
    return np.ones(len(labels))


_PRIORS = {
    "algebraic": algebraic_prior,
    "exponential": exponential_prior,
    "exp": exponential_prior,
    "gaussian": gaussian_prior,
    "none": no_prior,
}


def make_prior(labels: Labels, spec: dict | str | None = None) -> np.ndarray:
    """γ (length = number of labels) from a spec such as ``{"name": "algebraic", "p": 4}``.

    ``None`` gives upstream's default, algebraic with p = 4.
    """
    if spec is None:
        spec = {"name": "algebraic", "p": 4}
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = str(spec.pop("name", "algebraic")).lower()
    if name not in _PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of {sorted(set(_PRIORS))}")
    try:
        gamma = _PRIORS[name](labels, **{k: float(v) for k, v in spec.items()})
    except TypeError as exc:
        raise ValueError(f"bad parameters for prior {name!r}: {exc}") from None
    if not np.all(np.isfinite(gamma)) or np.any(gamma <= 0):
        raise ValueError(f"prior {name!r} gives non-positive or non-finite entries")
    return gamma
