"""Per-element bond lengths (Å) from the VASP auto length-scale table that ACEpotentials.jl ships
(libAtoms/universalSOAP). They set the default Agnesi r0 and the default cutoff 2.5·r0."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml
from ase.data import atomic_numbers


@lru_cache(maxsize=1)
def _table() -> dict[int, float]:
    text = resources.files("aceserver.data").joinpath(
        "length_scales_VASP_auto_length_scales.yaml").read_text()
    raw = yaml.safe_load(text)
    return {int(z): float(entry["bond_len"][0]) for z, entry in raw.items()}


def bond_length(symbol: str) -> float:
    """Bond length of an element in Å; a clear error for elements missing from the table."""
    if symbol not in atomic_numbers:
        raise ValueError(f"unknown element {symbol!r}")
    z = atomic_numbers[symbol]
    try:
        return _table()[z]
    except KeyError:
        raise ValueError(f"no default bond length for element {symbol!r} (Z={z}); "
                         "pass r0 and rcut explicitly") from None


def pair_r0(symbol_i: str, symbol_j: str) -> float:
    """r0 of a species pair: the mean of the two bond lengths (ACEpotentials' :bondlen)."""
    return (bond_length(symbol_i) + bond_length(symbol_j)) / 2

