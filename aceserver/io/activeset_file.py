"""The active-set sidecar file `<model stem>.activeset.npz`: the local environments of a model's
active-set atoms, from which A (and A⁻¹) is recomputed exactly when the model is loaded.

A site descriptor depends only on the neighbours within the cutoff, so an active atom is stored as
its species and the vectors to its neighbours (periodic images included): a few MB where A⁻¹
itself would be L² float64 per element (21 MB for L = 1634). A numpy `.npz` archive, written with
`np.savez_compressed` and read with allow_pickle=False. Keys (n active atoms of all elements, p
neighbour pairs of all of them):

    format             str      "aceserver-activeset"
    version            int64    1
    model_sha256       str      sha256 of the model the set was built for (`model.sha256`); a
                                sidecar of another model is refused
    elements           (e,) str the elements with an active set, in the model's order
    atom_counts        (e,) int64  active atoms of each element (rows of A from the data)
    floor_counts       (e,) int64  floor rows of each element; atoms + floor rows = L, the
                                element's descriptor columns
    atoms_read         (e,) int64  atoms of each element in the data the set was chosen from
    log_abs_det        (e,) float64  log |det A| of each element (A in the model's descriptor units)
    rcut               float64  Å, the cutoff the environments were cut at (the model's)
    floor              float64  the floor rows' size relative to each column's largest value
                                over the data (0: none; see `fitting.active_set_build`)
    centre_numbers     (n,) int64  atomic number of each active atom; the atoms of elements[0]
                                first, in active-set row order, then those of elements[1], ...
    offsets            (n+1,) int64  neighbours of active atom k are rows offsets[k]:offsets[k+1]
    vectors            (p, 3) float64  Å, r_j - r_k: neighbour position relative to its centre
    numbers            (p,) int64  atomic number of each neighbour
    floor_columns      (m,) int64  column k of each floor row (value·e_k), elements in order
    floor_values       (m,) float64  its value (descriptor units, > 0)
    source_frame       (n,) int64  frame of the active atom in the data it was chosen from
                                (0-based, over the data files in order)
    source_atom        (n,) int64  index of the atom in that frame
    data_files         (f,) str  file names (no folders) of that data, `data_sha256` (f,) str

`read` checks every key (presence, dtype, shape, consistency, finiteness, atomic numbers) and raises
`ModelFileError` naming the file and the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from . import npz

FORMAT = "aceserver-activeset"
VERSION = 1
SUFFIX = ".activeset.npz"


@dataclass
class ActiveSetEnvironments:
    """The contents of a sidecar (see the module docstring for units and layout)."""
    model_sha256: str
    elements: list[str]
    atom_counts: np.ndarray
    floor_counts: np.ndarray
    atoms_read: np.ndarray
    log_abs_det: np.ndarray
    rcut: float
    floor: float
    centre_numbers: np.ndarray
    offsets: np.ndarray
    vectors: np.ndarray
    numbers: np.ndarray
    floor_columns: np.ndarray
    floor_values: np.ndarray
    source_frame: np.ndarray
    source_atom: np.ndarray
    data_files: list[str] = field(default_factory=list)
    data_sha256: list[str] = field(default_factory=list)

    def element_slices(self) -> dict[str, tuple[slice, slice]]:
        """{element: (slice of its active atoms, slice of its floor rows)}."""
        def slices(counts):
            ends = np.cumsum(counts)
            return [slice(int(e - c), int(e)) for c, e in zip(counts, ends)]
        return dict(zip(self.elements, zip(slices(self.atom_counts), slices(self.floor_counts))))


def sidecar_path(model_path) -> Path:
    """`<folder>/<stem>.activeset.npz` for a model file `<folder>/<stem>.<suffix>` (the last
    suffix only: `zuo-Si.json` -> `zuo-Si.activeset.npz`)."""
    p = Path(model_path)
    return p.with_name(p.stem + SUFFIX)


def write(path, env: ActiveSetEnvironments) -> None:
    """Write the sidecar (checked as `read` checks it). The path is used as given."""
    arrays = _arrays(env)
    _validate(path, arrays)
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def read(path) -> ActiveSetEnvironments:
    path = Path(path)
    arrays = npz.read_arrays(path, "active-set")
    _validate(path, arrays)
    return ActiveSetEnvironments(
        model_sha256=str(arrays["model_sha256"]), elements=[str(e) for e in arrays["elements"]],
        atom_counts=arrays["atom_counts"].astype(np.int64),
        floor_counts=arrays["floor_counts"].astype(np.int64),
        atoms_read=arrays["atoms_read"].astype(np.int64),
        log_abs_det=arrays["log_abs_det"].astype(np.float64), rcut=float(arrays["rcut"]),
        floor=float(arrays["floor"]), centre_numbers=arrays["centre_numbers"].astype(np.int64),
        offsets=arrays["offsets"].astype(np.int64), vectors=arrays["vectors"].astype(np.float64),
        numbers=arrays["numbers"].astype(np.int64),
        floor_columns=arrays["floor_columns"].astype(np.int64),
        floor_values=arrays["floor_values"].astype(np.float64),
        source_frame=arrays["source_frame"].astype(np.int64),
        source_atom=arrays["source_atom"].astype(np.int64),
        data_files=[str(f) for f in arrays["data_files"]],
        data_sha256=[str(f) for f in arrays["data_sha256"]])


def _arrays(env: ActiveSetEnvironments) -> dict[str, np.ndarray]:
    return {
        "format": np.array(FORMAT), "version": np.array(VERSION, dtype=np.int64),
        "model_sha256": np.array(str(env.model_sha256)), "elements": np.array(env.elements, dtype=str),
        "atom_counts": np.asarray(env.atom_counts, dtype=np.int64),
        "floor_counts": np.asarray(env.floor_counts, dtype=np.int64),
        "atoms_read": np.asarray(env.atoms_read, dtype=np.int64),
        "log_abs_det": np.asarray(env.log_abs_det, dtype=np.float64),
        "rcut": np.array(float(env.rcut)), "floor": np.array(float(env.floor)),
        "centre_numbers": np.asarray(env.centre_numbers, dtype=np.int64),
        "offsets": np.asarray(env.offsets, dtype=np.int64),
        "vectors": np.asarray(env.vectors, dtype=np.float64).reshape(-1, 3),
        "numbers": np.asarray(env.numbers, dtype=np.int64),
        "floor_columns": np.asarray(env.floor_columns, dtype=np.int64),
        "floor_values": np.asarray(env.floor_values, dtype=np.float64),
        "source_frame": np.asarray(env.source_frame, dtype=np.int64),
        "source_atom": np.asarray(env.source_atom, dtype=np.int64),
        "data_files": np.array(list(env.data_files), dtype=str).reshape(-1),
        "data_sha256": np.array(list(env.data_sha256), dtype=str).reshape(-1)}


_KINDS = {"format": ("U", 0), "version": ("i", 0), "model_sha256": ("U", 0), "elements": ("U", 1),
          "atom_counts": ("i", 1), "floor_counts": ("i", 1), "atoms_read": ("i", 1), "log_abs_det": ("f", 1),
          "rcut": ("f", 0), "floor": ("f", 0), "centre_numbers": ("i", 1), "offsets": ("i", 1),
          "vectors": ("f", 2), "numbers": ("i", 1), "floor_columns": ("i", 1),
          "floor_values": ("f", 1), "source_frame": ("i", 1),
          "source_atom": ("i", 1), "data_files": ("U", 1), "data_sha256": ("U", 1)}


def _validate(path, a: dict) -> None:
    def bad(key, what):
        raise ModelFileError(f"{path}: {key!r} {what}")

    for key, (kind, ndim) in _KINDS.items():
        if key not in a:
            bad(key, "is missing (not an aceserver active-set file?)")
        if a[key].dtype.kind != kind or a[key].ndim != ndim:
            bad(key, f"has dtype {a[key].dtype} and {a[key].ndim} dimensions; expected kind "
                     f"{kind!r} with {ndim}")
    if str(a["format"]) != FORMAT:
        bad("format", f"is {str(a['format'])!r}, not {FORMAT!r}")
    if int(a["version"]) != VERSION:
        bad("version", f"is {int(a['version'])}; this aceserver reads version {VERSION}")
    e, n, m = len(a["elements"]), len(a["centre_numbers"]), len(a["floor_columns"])
    if e == 0 or any(len(a[k]) != e for k in ("atom_counts", "floor_counts", "atoms_read",
                                                "log_abs_det")):
        bad("elements", "must be non-empty, with one entry of 'atom_counts', 'floor_counts', "
                        "'atoms_read' and 'log_abs_det' each")
    if (a["atom_counts"] < 0).any() or int(a["atom_counts"].sum()) != n:
        bad("atom_counts", f"must be non-negative and sum to the {n} active atoms")
    if (a["floor_counts"] < 0).any() or int(a["floor_counts"].sum()) != m:
        bad("floor_counts", f"must be non-negative and sum to the {m} floor rows")
    if a["floor_values"].shape != (m,) or not (a["floor_values"] > 0).all() or (
            m and a["floor_columns"].min() < 0):
        bad("floor_values", "must hold one positive value per floor row (columns ≥ 0)")
    if not (np.isfinite(a["floor"]) and 0 <= float(a["floor"]) < 1
            and np.isfinite(a["floor_values"]).all()):
        bad("floor", "must be in [0, 1), its values finite")
    off = a["offsets"]
    if len(off) != n + 1 or off[0] != 0 or (np.diff(off) < 0).any():
        bad("offsets", f"must rise from 0 with {n + 1} entries")
    p = int(off[-1])
    if a["vectors"].shape != (p, 3) or a["numbers"].shape != (p,):
        bad("vectors", f"and 'numbers' must hold the {p} neighbours that 'offsets' counts")
    if not (np.isfinite(a["vectors"]).all() and np.isfinite(a["log_abs_det"]).all()
            and np.isfinite(a["rcut"]) and float(a["rcut"]) > 0):
        bad("vectors", "'log_abs_det' and 'rcut' must be finite (rcut > 0)")
    for key in ("centre_numbers", "numbers"):
        if len(a[key]) and (a[key].min() < 1 or a[key].max() > 118):
            bad(key, "holds a value that is not an atomic number (1-118)")
    if a["source_frame"].shape != (n,) or a["source_atom"].shape != (n,):
        bad("source_frame", f"and 'source_atom' must have one entry per active atom ({n})")
    if a["data_files"].shape != a["data_sha256"].shape:
        bad("data_files", "and 'data_sha256' must have the same length")
