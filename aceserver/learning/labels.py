"""One labelled structure -> a training `Config`, through the fitting data reader's checks
(`fitting.data.config_from_atoms`: shapes, NaN/inf, elements of the model, stress -> virial).

Units: positions and cell Å, energy eV (total, E0 included), forces eV/Å, virial eV (W = -V·σ),
stress eV/Å³ (ASE Voigt order xx yy zz yz xz xy, or 3×3); give a virial or a stress, not both.
"""
from __future__ import annotations

import numpy as np
from ase import Atoms

from aceserver.errors import ACEInputError
from aceserver.fitting.data import Config, FitDataError, Keys, config_from_atoms

KEYS = Keys(energy="energy", force="forces", virial="virial", stress="stress", config_type="config_type")
MAX_CONFIG_TYPE = 100          # characters of a config_type (it names a weight group of the fit)


class PostedLabelError(ACEInputError):
    """A labelled structure is refused; `field` is its full path, e.g. `structures[2].forces`."""


def labelled_config(numbers, positions, cell, pbc, energy: float, forces, *, virial=None, stress=None,
                    config_type: str = "default", elements: list[str] | None = None, where: str = "structure",
                    frame: int = 0) -> Config:
    """A validated `Config`; `PostedLabelError` naming `where` and the label for missing or malformed
    labels, an element not in `elements`, a stress without a 3-D periodic cell of non-zero volume."""
    try:
        return _config(numbers, positions, cell, pbc, energy, forces, virial, stress, config_type, elements,
                       where, frame)
    except FitDataError as ex:
        head = f"file {ex.file}, frame {ex.frame}" + (f", field {ex.field!r}" if ex.field is not None else "") + ": "
        text = str(ex)
        field = f"{where}.{ex.field}" if ex.field else where
        raise PostedLabelError(f"{field}: {text[len(head):] if text.startswith(head) else text}", field) from None


def _config(numbers, positions, cell, pbc, energy, forces, virial, stress, config_type, elements, where, frame):
    if energy is None:
        raise FitDataError("energy (eV) is required", where, frame, "energy")
    if forces is None:
        raise FitDataError("forces (eV/Å, shape (N, 3)) are required", where, frame, "forces")
    if virial is not None and stress is not None:
        raise FitDataError("give a virial or a stress, not both", where, frame, "stress")
    if not isinstance(config_type, str) or not config_type or len(config_type) > MAX_CONFIG_TYPE:
        raise FitDataError(f"config_type must be a non-empty string of at most {MAX_CONFIG_TYPE} characters",
                           where, frame, "config_type")
    pbc = np.asarray(pbc, dtype=bool)
    if stress is not None and not pbc.all():
        raise FitDataError("a stress needs a cell periodic in all three directions", where, frame, "stress")
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell if cell is not None else np.zeros((3, 3)), pbc=pbc)
    atoms.info["energy"] = energy
    atoms.info["config_type"] = config_type
    if virial is not None:
        atoms.info["virial"] = np.asarray(virial, dtype=float)
    if stress is not None:
        atoms.info["stress"] = np.asarray(stress, dtype=float)
    forces = np.asarray(forces, dtype=float)
    if forces.shape != (len(atoms), 3):
        raise FitDataError(f"forces must have shape ({len(atoms)}, 3), got {forces.shape}", where, frame, "forces")
    atoms.arrays["forces"] = forces
    return config_from_atoms(atoms, KEYS, where, frame, elements)
