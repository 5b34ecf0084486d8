"""Extended XYZ text -> a calculate request (structures as numbers, positions, cell, pbc).

The frames are read with ASE's extxyz reader; what it cannot read becomes a DecodeError (400) that
quotes its reason. Frames then go through the same schema validation as JSON requests.
"""
from __future__ import annotations

import io
from typing import Any

from ase.io import read

from .error_replies import DecodeError

MAX_FRAMES_READ = 10_000     # the request limit (--max-structures) applies after this


def decode_extxyz(text: str) -> dict[str, Any]:
    if not text.strip():
        raise DecodeError("empty extended XYZ text")
    try:
        frames = read(io.StringIO(text), index=f":{MAX_FRAMES_READ}", format="extxyz")
    except Exception as ex:  # the reader signals bad text by many exception types; all are the input's fault
        raise DecodeError(f"malformed extended XYZ: {type(ex).__name__}: {ex}") from None
    if not frames:
        raise DecodeError("no structure found in the extended XYZ text")
    structures = []
    for atoms in frames:
        pbc = [bool(p) for p in atoms.pbc]
        cell = atoms.cell.array.tolist() if atoms.cell.rank > 0 or any(pbc) else None
        structures.append({"numbers": [int(z) for z in atoms.numbers],
                           "positions": atoms.positions.tolist(), "cell": cell, "pbc": pbc})
    return {"structure": structures[0]} if len(structures) == 1 else {"structures": structures}
