"""aceserver: ACEpotentials.jl-compatible linear ACE potentials, fitted, evaluated with numba, served.

Public API (names follow ACEpotentials.jl where one exists):
    ace1_model(elements=..., order=..., totaldegree=..., ...)  -> ACEModel
    load_model(path)                                            -> ACEModel or PACEPotential
    ACECalculator(model_or_path)                                -> ASE calculator
Units everywhere: eV, Å, eV/Å; stress eV/Å³ (ASE Voigt order); virial eV (W = -V·σ).

The package, in data-flow order (each layer imports only the ones above it in this list;
docs/architecture.md has the full map, tests/test_layers.py keeps it so):

    errors, structure   the exception hierarchy; a structure's checks and species lookup
    kernels/            numba: neighbour list, harmonics, radials, the site tables contract,
                        A -> AA -> energy and pullback, force/virial scatter, fitting rows
    basis/              construction-time numpy: specifications, polynomials, couplings, products
    io/                 the aceserver model file (JSON)
    benchmarking        standard structures and timings
    evaluation/         the evaluation layer: `SitePotential.evaluate` -> `Evaluation`, and the
                        post-processing every front end shares (stress, committee spread)
    ace1/               model family: ACEpotentials.jl's ace1_model with its parameters
    pacemaker/          model family: pacemaker .yace potentials (read, evaluate, write, export)
    loading, catalogue  `load_model` for either family; the shipped models
    calculator          the ASE front end (`ACECalculator`)
    fitting/            acefit, streaming and distributed least squares, selection, the fit workflow
    serving/            the HTTP service (http/) and the i-PI driver (ipi/)
    commands/, cli      the `aceserver` command line: parse, call the library, print
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "ace1_model": "aceserver.ace1.model",
    "ACEModel": "aceserver.ace1.model",
    "load_model": "aceserver.loading",
    "ACECalculator": "aceserver.calculator",
    "Evaluation": "aceserver.evaluation",
}

__all__ = sorted(_LAZY)


def __getattr__(name):  # lazy so that `import aceserver` stays cheap (no numba compile)
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aceserver' has no attribute {name!r}")
