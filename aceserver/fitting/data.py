"""Training data: extended-XYZ reading, observation keys, per-config_type weights, E0.

Follows ACEpotentials.jl's `AtomsData` (``src/atoms_data.jl``):

* observation keys (energy, forces, virial) are matched case-insensitively, first against the
  configuration's info (system-level) keys, then against its per-atom arrays, then against the
  results of a calculator attached by the reader (ASE moves ``energy``/``forces``/``stress`` there);
* a key absent from a configuration skips that observation for that configuration;
* a stress (ASE convention, eV/Å³, 6 Voigt or 9 numbers) is converted to a virial W = -V·σ;
* weights come from the entry of ``weights`` whose key matches the configuration's ``config_type``
  (case-insensitively), else from ``weights["default"]``, else E = F = V = 1.

Units: energies eV, forces eV/Å, virials eV (W = -V·σ).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
from ase.data import chemical_symbols

from aceserver.errors import ACEInputError

# Upstream's `acefit!` default weights (ACEpotentials.jl src/fit_model.jl:17).
DEFAULT_WEIGHTS = {"default": {"E": 30.0, "F": 1.0, "V": 1.0}}
DEFAULT_CONFIG_TYPE = "default"


class FitDataError(ACEInputError):
    """Malformed training data. The message names the file, the frame (0-based) and the field."""

    def __init__(self, message: str, file: str | None = None, frame: int | None = None,
                 field: str | None = None):
        where = []
        if file is not None:
            where.append(f"file {file}")
        if frame is not None:
            where.append(f"frame {frame}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message, field=field)
        self.file = file
        self.frame = frame
        self._parts = (message, file, frame, field)

    def __reduce__(self):
        # the same error after a round trip between processes (a Dask worker and the client)
        return (type(self), self._parts)


@dataclass
class Config:
    """One labelled configuration. Missing observations are ``None``."""

    numbers: np.ndarray            # (N,) atomic numbers
    positions: np.ndarray          # (N, 3) Å
    cell: np.ndarray               # (3, 3) Å, rows are lattice vectors
    pbc: np.ndarray                # (3,) bool
    energy: float | None = None    # eV, total (E0 included)
    forces: np.ndarray | None = None   # (N, 3) eV/Å
    virial: np.ndarray | None = None   # (3, 3) eV
    config_type: str = DEFAULT_CONFIG_TYPE
    source: str = ""               # file name
    frame: int = -1                # 0-based index in the file

    @property
    def natoms(self) -> int:
        return len(self.numbers)

    def where(self) -> str:
        return f"file {self.source}, frame {self.frame}"


@dataclass
class Keys:
    """Names of the observations in the data files (matched case-insensitively)."""

    energy: str = "energy"
    force: str = "force"
    virial: str = "virial"
    stress: str | None = None      # if set and no virial is found, a stress is converted to a virial
    config_type: str = "config_type"


def _find_key(mapping, key: str):
    """The key of ``mapping`` equal to ``key`` ignoring case (exact match preferred), or None."""
    if key in mapping:
        return key
    low = key.lower()
    for k in mapping:
        if isinstance(k, str) and k.lower() == low:
            return k
    return None


def _lookup(atoms, key: str | None):
    """Value of ``key`` from info, then per-atom arrays, then attached calculator results."""
    if key is None:
        return None, None
    k = _find_key(atoms.info, key)
    if k is not None:
        return atoms.info[k], "info"
    k = _find_key(atoms.arrays, key)
    if k is not None:
        return atoms.arrays[k], "arrays"
    calc = getattr(atoms, "calc", None)
    results = getattr(calc, "results", None) if calc is not None else None
    if results:
        names = [key]
        # ASE renames the standard extxyz keys when it attaches a calculator
        if key.lower() == "force":
            names.append("forces")
        for name in names:
            k = _find_key(results, name)
            if k is not None:
                return results[k], "calc"
    return None, None


def _finite(arr, file, frame, field):
    if not np.all(np.isfinite(arr)):
        raise FitDataError("contains NaN or inf", file, frame, field)
    return arr


def _as_3x3(value, file, frame, field, what):
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise FitDataError(f"{what} is not numeric", file, frame, field) from None
    if a.shape == (3, 3):
        pass
    elif a.size == 9:
        a = a.reshape(3, 3)
    elif a.size == 6:  # Voigt xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = a.ravel()
        a = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    else:
        raise FitDataError(f"{what} must have 9 (3x3) or 6 (Voigt) numbers, got shape {a.shape}",
                           file, frame, field)
    return _finite(a, file, frame, field)


def config_from_atoms(atoms, keys: Keys = Keys(), file: str = "<memory>", frame: int = 0,
                      elements: list[str] | None = None) -> Config:
    """Extract one :class:`Config` from an ASE ``Atoms``, validating shapes and values."""
    numbers = np.asarray(atoms.numbers, dtype=np.int64)
    n = len(numbers)
    if n == 0:
        raise FitDataError("configuration has no atoms", file, frame, "numbers")
    positions = _finite(np.asarray(atoms.positions, dtype=float), file, frame, "positions")
    cell = _finite(np.asarray(atoms.cell[:], dtype=float), file, frame, "cell")
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if elements is not None:
        known = set(elements)
        for z in np.unique(numbers):
            sym = chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z)
            if sym not in known:
                raise FitDataError(f"element {sym} is not in the model's elements {list(elements)}",
                                   file, frame, "numbers")

    energy = None
    val, _ = _lookup(atoms, keys.energy)
    if val is not None:
        try:
            e = np.asarray(val, dtype=float)
        except (TypeError, ValueError):
            raise FitDataError("energy is not a number", file, frame, keys.energy) from None
        if e.size != 1:
            raise FitDataError(f"energy must be one number, got shape {e.shape}", file, frame, keys.energy)
        energy = float(_finite(e, file, frame, keys.energy).ravel()[0])

    forces = None
    val, _ = _lookup(atoms, keys.force)
    if val is not None:
        try:
            f = np.asarray(val, dtype=float)
        except (TypeError, ValueError):
            raise FitDataError("forces are not numeric", file, frame, keys.force) from None
        if f.shape != (n, 3):
            if f.size == 3 * n:
                f = f.reshape(n, 3)
            else:
                raise FitDataError(f"forces must have shape ({n}, 3), got {f.shape}", file, frame, keys.force)
        forces = _finite(f, file, frame, keys.force)

    virial = None
    val, _ = _lookup(atoms, keys.virial)
    if val is not None:
        virial = _as_3x3(val, file, frame, keys.virial, "virial")
    elif keys.stress is not None:
        val, _ = _lookup(atoms, keys.stress)
        if val is not None:
            sigma = _as_3x3(val, file, frame, keys.stress, "stress")
            volume = abs(np.linalg.det(cell))
            if not volume > 0:
                raise FitDataError("stress given but the cell has zero volume", file, frame, keys.stress)
            virial = -volume * sigma

    ct, _ = _lookup(atoms, keys.config_type)
    config_type = str(ct) if ct is not None and not isinstance(ct, np.ndarray) else DEFAULT_CONFIG_TYPE
    return Config(numbers=numbers, positions=positions, cell=cell, pbc=pbc, energy=energy,
                  forces=forces, virial=virial, config_type=config_type, source=str(file), frame=frame)


def read_configs(path, keys: Keys = Keys(), elements: list[str] | None = None, index=":") -> list[Config]:
    """Read an extended-XYZ file (via ase.io) into a list of :class:`Config`."""
    path = Path(path)
    if not path.exists():
        raise FitDataError("no such file", str(path))
    out = []
    frames = ase.io.iread(str(path), index=index, format="extxyz")
    while True:
        frame = len(out)
        try:
            atoms = next(frames)
        except StopIteration:
            break
        except Exception as exc:  # ase raises many types for unreadable frames
            raise FitDataError(f"cannot read extended XYZ: {exc}", str(path), frame) from exc
        out.append(config_from_atoms(atoms, keys, str(path), frame, elements))
    return out


# ---------------------------------------------------------------------------------------------
# weights


def normalise_weights(weights: dict | None) -> dict[str, dict[str, float]]:
    """Validate a ``{config_type: {"E": w, "F": w, "V": w}}`` dict; missing E/F/V entries are 1."""
    if weights is None:
        weights = DEFAULT_WEIGHTS
    out = {}
    for ct, w in weights.items():
        if not isinstance(w, dict):
            raise ValueError(f"weights[{ct!r}] must be a mapping with keys E, F, V")
        entry = {"E": 1.0, "F": 1.0, "V": 1.0}
        for k, v in w.items():
            kk = str(k).upper()
            if kk not in entry:
                raise ValueError(f"weights[{ct!r}] has unknown observation {k!r} (use E, F, V)")
            v = float(v)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"weights[{ct!r}][{k!r}] must be a finite number >= 0, got {v}")
            entry[kk] = v
        out[str(ct)] = entry
    return out


MAX_FORCE_GROUPS = 100


def rms_force(config: Config) -> float:
    """The configuration's root-mean-square force component, eV/Å (0 without forces or atoms)."""
    F = config.forces
    return float(np.sqrt(np.mean(F ** 2))) if F is not None and F.size else 0.0


def check_force_groups(n_groups) -> int:
    """``n_groups`` if it is a valid number of RMS-force groups (an integer, 2..MAX_FORCE_GROUPS), else ValueError."""
    if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) or not 2 <= n_groups <= MAX_FORCE_GROUPS:
        raise ValueError(f"force_groups must be an integer from 2 to {MAX_FORCE_GROUPS}, got {n_groups!r}")
    return int(n_groups)


def group_by_force(configs: list[Config], n_groups: int, edges: np.ndarray | None = None) -> np.ndarray:
    """Label configurations by their RMS force (`rms_force`), so that weights can differ between
    near-equilibrium and hot or compressed ones: config_type "rms0" (smallest forces) to
    f"rms{n_groups - 1}", split at ``edges`` (eV/Å, ascending, n_groups - 1 of them; default: the
    quantiles of these configurations' RMS forces, equal-sized groups). Returns the edges used
    (label other sets, e.g. validation, with the training set's). The labels replace config_type,
    so configurations that carry one of their own are refused."""
    check_force_groups(n_groups)
    typed = sorted({c.config_type for c in configs} - {DEFAULT_CONFIG_TYPE})
    if typed:
        raise ValueError(f"force_groups labels configurations by RMS force in place of their config_type, and "
                         f"these have their own ({', '.join(map(repr, typed[:5]))}); use per-config_type weights "
                         "or remove the config_type key")
    rms = np.array([rms_force(c) for c in configs])
    if edges is None:
        edges = np.quantile(rms, np.linspace(0.0, 1.0, n_groups + 1)[1:-1]) if len(rms) else np.zeros(n_groups - 1)
    edges = np.asarray(edges, dtype=float)
    for c, g in zip(configs, np.searchsorted(edges, rms, side="right")):
        c.config_type = f"rms{g}"
    return edges


def config_weights(config_type: str, weights: dict[str, dict[str, float]]) -> dict[str, float]:
    """Upstream's rule: the matching config_type entry, else "default", else E = F = V = 1."""
    k = _find_key(weights, config_type)
    if k is not None:
        return weights[k]
    k = _find_key(weights, "default")
    if k is not None:
        return weights[k]
    return {"E": 1.0, "F": 1.0, "V": 1.0}


# ---------------------------------------------------------------------------------------------
# E0


def isolated_atom_energies(configs: list[Config]) -> dict[str, float]:
    """E0 per element from single-atom configurations with an energy (eV).

    Configurations whose config_type contains "isolated" are preferred; otherwise any one-atom
    configuration counts. Inconsistent values for the same element are an error.
    """
    single = [c for c in configs if c.natoms == 1 and c.energy is not None]
    tagged = [c for c in single if "isolated" in c.config_type.lower()]
    out: dict[str, tuple[float, Config]] = {}
    for c in tagged or single:
        sym = chemical_symbols[int(c.numbers[0])]
        if sym in out and abs(out[sym][0] - c.energy) > 1e-8 * max(1.0, abs(c.energy)):
            raise FitDataError(f"two isolated-atom energies for {sym}: {out[sym][0]} ({out[sym][1].where()}) "
                               f"and {c.energy}", c.source, c.frame, "energy")
        out.setdefault(sym, (c.energy, c))
    return {k: v[0] for k, v in out.items()}


def resolve_E0(E0, elements: list[str], configs: list[Config]) -> dict[str, float]:
    """E0 given explicitly (dict), or "isolated_atom"/"auto"/None: taken from isolated atoms.

    An explicit dict may leave elements out; those are taken from isolated atoms if present.
    """
    given = {} if E0 is None or isinstance(E0, str) else {str(k): float(v) for k, v in dict(E0).items()}
    if isinstance(E0, str) and E0.lower() not in ("isolated_atom", "auto"):
        raise ValueError(f"E0 must be a mapping element -> eV, or 'isolated_atom', got {E0!r}")
    unknown = set(given) - set(elements)
    if unknown:
        raise ValueError(f"E0 names elements {sorted(unknown)} that are not in the model's {elements}")
    missing = [el for el in elements if el not in given]
    if missing:
        iso = isolated_atom_energies(configs)
        for el in missing:
            if el in iso:
                given[el] = iso[el]
            elif E0 is None:
                given[el] = 0.0
            else:
                raise ValueError(f"no E0 for {el}: give it explicitly or include an isolated {el} atom")
    return {el: given[el] for el in elements}


def split_train_validation(configs: list[Config], fraction: float, seed: int = 0):
    """Random split by configuration (seeded). Isolated atoms always stay in the training set."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(configs), []
    rest = [i for i, c in enumerate(configs) if c.natoms > 1]    # isolated atoms never validate
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(rest))
    nval = int(round(fraction * len(rest)))
    val_idx = sorted(rest[j] for j in perm[:nval])
    vs = set(val_idx)
    train = [configs[i] for i in range(len(configs)) if i not in vs]
    return train, [configs[i] for i in val_idx]
