"""One frame of a job: the structure at a step and what was computed on it, and its encodings.

A frame is a dict. Scalars: `index` (0, 1, ... in the order written), `step`, `time_fs` (fs; None
for a relaxation), `energy` (potential energy, eV), `kinetic_energy` (eV), `temperature_K` (K;
both None for a relaxation), `max_force` (eV/Å), `energy_std` (eV), `max_gamma` (dimensionless).
Arrays: `numbers` (N,), `positions` (N, 3) Å, `momenta` (N, 3) amu·Å/(ASE time unit) as ASE
stores them (None for a relaxation), `cell` (3, 3) Å (rows a, b, c), `pbc` (3,), `forces` (N, 3)
eV/Å, `energies` (N,) eV, `stress` (6,) eV/Å³ Voigt xx yy zz yz xz xy (None unless 3-D periodic),
`gamma` (N,) (None unless recorded). Absent quantities are None. A frame of a relax_many job
also has `structure`, the index of its structure in the job's list.

Stored and sent as msgpack: every array a map {dtype: "<f8"|"<i8"|"|b1", shape, data: raw
little-endian C-order bytes}, the convention of the calculate API; `to_json` gives nested lists.
"""
from __future__ import annotations

import io
import math
from typing import Any, Iterable

import msgpack
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.io.trajectory import Trajectory

ARRAY_KEYS = {"dtype", "shape", "data"}
ARRAYS = ("numbers", "positions", "momenta", "cell", "pbc", "forces", "energies", "stress", "gamma")
BYTES_PER_ATOM = 88              # numbers, positions, momenta, forces, energies (the disk bound, limits.py)
DTYPES = {"<f8": np.dtype("<f8"), "<i8": np.dtype("<i8"), "|b1": np.dtype("?")}


def _pack(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        dtype = "|b1" if a.dtype == bool else ("<i8" if a.dtype.kind in "iu" else "<f8")
        a = a.astype(DTYPES[dtype], copy=False)
        return {"dtype": dtype, "shape": list(a.shape), "data": a.tobytes()}
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode(frame: dict) -> bytes:
    """A frame as msgpack bytes (what the store keeps and the msgpack stream sends)."""
    return msgpack.packb(frame, default=_pack, use_bin_type=True)


def _unpack(obj: dict) -> Any:
    if obj.keys() == ARRAY_KEYS and isinstance(obj["data"], bytes):
        return np.frombuffer(obj["data"], dtype=DTYPES[obj["dtype"]]).reshape(obj["shape"])
    return obj


def decode(blob: bytes) -> dict:
    """A frame from its msgpack bytes, arrays as (read-only) numpy arrays."""
    return msgpack.unpackb(blob, raw=False, object_hook=_unpack)


def to_json(frame: dict) -> dict:
    """A decoded frame with nested lists for arrays and None for non-finite numbers (JSON has no NaN)."""
    out = {}
    for k, v in frame.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        elif isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def make(atoms: Atoms, results: dict, index: int, step: int, time_fs: float | None, md: bool,
         gamma: np.ndarray | None = None) -> dict:
    """The frame of `atoms` at `step` from its calculator's `results` (computed on these positions)."""
    forces = np.asarray(results["forces"])
    frame = {
        "index": index, "step": step, "time_fs": time_fs,
        "numbers": atoms.numbers.copy(), "positions": atoms.positions.copy(),
        "momenta": atoms.get_momenta() if md else None,
        "cell": atoms.cell.array.copy(), "pbc": atoms.pbc.copy(),
        "energy": float(results["energy"]),
        "kinetic_energy": float(atoms.get_kinetic_energy()) if md else None,
        "temperature_K": float(atoms.get_temperature()) if md and len(atoms) else None,
        "forces": forces.copy(), "energies": np.asarray(results["energies"]).copy(),
        "stress": np.asarray(results["stress"]).copy() if "stress" in results else None,
        "max_force": float(np.sqrt((forces ** 2).sum(axis=1).max())) if len(forces) else 0.0,
        "energy_std": float(results["energy_std"]) if results.get("energy_std") is not None else None,
        "gamma": None if gamma is None else np.asarray(gamma, dtype=float).copy(),
        "max_gamma": None if gamma is None or not len(gamma) else float(np.max(gamma)),
    }
    return frame


def to_atoms(frame: dict) -> Atoms:
    """A frame as `ase.Atoms` with momenta, and a SinglePointCalculator holding energy (eV), forces
    (eV/Å), per-atom energies and stress; the scalars in `atoms.info`, `gamma` in `atoms.arrays`."""
    atoms = Atoms(numbers=np.asarray(frame["numbers"]), positions=np.asarray(frame["positions"], dtype=float),
                  cell=np.asarray(frame["cell"], dtype=float), pbc=np.asarray(frame["pbc"], dtype=bool))
    if frame.get("momenta") is not None:
        atoms.set_momenta(np.asarray(frame["momenta"], dtype=float))
    if frame.get("gamma") is not None:
        atoms.new_array("gamma", np.asarray(frame["gamma"], dtype=float))
    for key in ("index", "step", "time_fs", "kinetic_energy", "temperature_K", "max_force", "energy_std",
                "max_gamma", "structure"):
        if frame.get(key) is not None:
            atoms.info[key] = frame[key]
    results = {"energy": frame["energy"], "forces": np.asarray(frame["forces"], dtype=float),
               "energies": np.asarray(frame["energies"], dtype=float)}
    if frame.get("stress") is not None:
        results["stress"] = np.asarray(frame["stress"], dtype=float)
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def extxyz(frames: Iterable[dict]) -> bytes:
    """Frames as extended XYZ text (ASE's writer: energy, forces, stress, per-atom energies, momenta)."""
    buf = io.StringIO()
    for frame in frames:
        write(buf, to_atoms(frame), format="extxyz")
    return buf.getvalue().encode()


def traj(frames: Iterable[dict], path: str) -> None:
    """Frames as an ASE trajectory file (`.traj`, ASE's ULM format) at `path`."""
    with Trajectory(path, "w") as out:
        for frame in frames:
            out.write(to_atoms(frame))
