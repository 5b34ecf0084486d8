"""A model's posted training data written out of the data log (`datalog.DataLog`), one
configuration at a time (for a streamed download), as extended XYZ or msgpack.

A record is one logged configuration: `version` (its batch's data version), `index` (in the
batch), `config_type`, `status` ("fitted": in the served model's fit; "pending": logged, not fitted
yet; "refused": the fitter refused its batch, `reason` says why, else None), `numbers` (N,),
`positions` (N, 3) Å, `cell` (3, 3) Å (rows a, b, c), `pbc` (3,), `energy` eV (total, as posted),
`forces` (N, 3) eV/Å, `virial` (3, 3) eV, W = -V·σ (as posted, or computed from a posted stress σ
in eV/Å³), or None.

Extended XYZ (`extxyz`): every float written with 17 significant digits, which reads back to the
same float64 (ASE's own writer rounds positions and forces to 8 decimals, so it is not used for
the atom lines). Per frame: `Lattice`, `pbc`, `energy` (eV), `virial` (eV, 9 numbers in the
extended-XYZ convention for 3×3 values, column-major, as ASE reads them), `config_type`,
`data_version`, `status`, `refused_reason` (line breaks in these two strings become spaces), and
`units`; columns species, pos (Å), forces (eV/Å).

msgpack (`msgpack`): a header map (`format`, `model`, `units`), then one map per record, arrays as
{dtype, shape, data: raw little-endian bytes} (the encoding of job frames, `jobs.frames.encode`).
"""
from __future__ import annotations

import io
from typing import Iterator

import numpy as np
from ase.data import chemical_symbols
from ase.io.extxyz import key_val_dict_to_str

from aceserver.fitting.data import Config
from aceserver.jobs import frames as jobframes

from .datalog import DataLog

FORMATS = ("extxyz", "msgpack")
FORMAT_ID = "aceserver-learning-data/1"
UNITS = {"positions": "Å", "cell": "Å", "energy": "eV", "forces": "eV/Å", "virial": "eV, W = -V·σ (3×3)"}
XYZ_UNITS = "energy:eV forces:eV/Ang pos:Ang virial:eV(W=-V*stress)"
FLOAT = " %.17g"                 # 17 significant digits: every float64 reads back bit for bit


def status(batch: dict, fitted: int) -> str:
    """The state of a logged batch when the served model is fitted on data version `fitted`."""
    if batch["refused"] is not None:
        return "refused"
    return "fitted" if batch["version"] <= fitted else "pending"


def records(log: DataLog, model: str, fitted: int, after: int = 0, until: int | None = None) -> Iterator[dict]:
    """`model`'s logged configurations above data version `after` (to `until`), one record at a time."""
    for batch, c in log.configs(model, after, until):
        yield record(batch, c, fitted)


def record(batch: dict, c: Config, fitted: int) -> dict:
    return {"version": batch["version"], "index": c.frame, "config_type": c.config_type,
            "status": status(batch, fitted), "reason": batch["refused"], "numbers": c.numbers,
            "positions": c.positions, "cell": c.cell, "pbc": c.pbc, "energy": c.energy, "forces": c.forces,
            "virial": c.virial}


def header(model: str) -> bytes:
    """The first map of the msgpack form."""
    return jobframes.encode({"format": FORMAT_ID, "model": model, "units": UNITS})


def to_msgpack(rec: dict) -> bytes:
    return jobframes.encode(rec)


def _line(text: str) -> str:
    """A string value on the comment line: line breaks would end the line (and the frame) early."""
    return " ".join(text.split())


def to_extxyz(rec: dict) -> bytes:
    """One record as one extended-XYZ frame (lossless for float64)."""
    info = {}
    if np.any(rec["cell"]) or np.any(rec["pbc"]):
        info["Lattice"] = np.asarray(rec["cell"], dtype=float).ravel()
    info["Properties"] = "species:S:1:pos:R:3:forces:R:3"
    info["energy"] = float(rec["energy"])
    if rec["virial"] is not None:    # column-major: ASE and the extended-XYZ convention read 9 values so
        info["virial"] = np.asarray(rec["virial"], dtype=float).ravel(order="F")
    info.update(config_type=_line(rec["config_type"]), data_version=int(rec["version"]), status=rec["status"])
    if rec["reason"] is not None:
        info["refused_reason"] = _line(rec["reason"])
    info["units"] = XYZ_UNITS
    info["pbc"] = np.asarray(rec["pbc"], dtype=bool)
    n = len(rec["numbers"])
    table = np.empty((n, 7), dtype=object)
    table[:, 0] = [chemical_symbols[z] for z in rec["numbers"]]
    table[:, 1:4] = rec["positions"]
    table[:, 4:7] = rec["forces"]
    buf = io.StringIO()
    buf.write(f"{n}\n{key_val_dict_to_str(info)}\n")
    np.savetxt(buf, table, fmt="%-2s" + FLOAT * 6)
    return buf.getvalue().encode()
