"""aceserver: ACEpotentials.jl-compatible linear ACE potentials, fitted, evaluated with numba, served.

Public API (names follow ACEpotentials.jl where one exists):
    ace1_model(elements=..., order=..., totaldegree=..., ...)  -> ACEModel
    load_model(path)                                            -> ACEModel
    ACECalculator(model_or_path)                                -> ASE calculator
Units everywhere: eV, Å, eV/Å; stress eV/Å³ (ASE Voigt order); virial eV (W = -V·σ).
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
