"""ASE calculator for aceserver models: energy, free_energy, forces, stress, energies (per atom),
plus the committee spreads when the model carries a committee and the extrapolation grade γ when
it carries an active set. Units: eV, Å, eV/Å, eV/Å³; γ is dimensionless.

Stress, committee spreads and γ are read from the `Evaluation` (`aceserver.evaluation` defines
them for every front end); nothing is recomputed here."""
from __future__ import annotations

import copy

import numpy as np
from ase import Atoms
from ase.cell import Cell
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .errors import NoActiveSetError
from .evaluation.site_potential import SitePotential
from .evaluation.verlet import DEFAULT_SKIN, VerletList
from .loading import load_model
from .structure import same_array

# what an ase.Atoms holds (ASE 3.23-3.29); `stored_copy` copies these, anything else uses Atoms.copy
ATOMS_FIELDS = frozenset({"arrays", "_cellobj", "_pbc", "_celldisp", "info", "_constraints", "_calc"})
_ARRAYS_COMPARED = tuple(p for p in all_changes if p not in ("cell", "pbc"))


def stored_copy(atoms):
    """What `atoms.copy()` gives (arrays, cell, pbc, celldisp and constraints copied, info
    shallow-copied, no calculator), without Atoms' constructor: 5 µs instead of 20-45 µs, a
    fifth of a 2-atom calculator call. Other classes, or an Atoms with other attributes (another
    ASE version), get `atoms.copy()`."""
    if type(atoms) is not Atoms or vars(atoms).keys() != ATOMS_FIELDS:
        return atoms.copy()
    new = Atoms.__new__(Atoms)
    new.arrays = {name: a.copy() for name, a in atoms.arrays.items()}
    new._cellobj = Cell(atoms._cellobj.array.copy())
    new._pbc = atoms._pbc.copy()
    new._celldisp = atoms._celldisp.copy()
    new.info = dict(atoms.info)
    new._constraints = copy.deepcopy(atoms._constraints) if atoms._constraints else []
    new._calc = None
    return new


class ACECalculator(Calculator):
    """ASE calculator over a potential (`ACEModel`, `PACEPotential`) or a file path (aceserver
    model file or pacemaker `.yace`).

    results: energy, free_energy (eV), forces (eV/Å), stress (eV/Å³, Voigt, periodic cells only),
    energies (eV per atom); with a committee also energy_committee (eV, one per member) and
    energy_std (eV) (committee=False skips them); with energies_std=True energies_std (N,) eV,
    the spread of each atom's site energy (opt-in: it needs every site's descriptor row, 1.35-1.8×
    the committee call on zuo-Si and Si-tiny); with committee_forces=True forces_committee
    (K, N, 3) and forces_std (N, 3) eV/Å. Every spread is the one HTTP and i-PI report: the population standard
    deviation sqrt(Σ_k (x_k - x̄)² / K) over the K members (ddof 0;
    `aceserver.evaluation.postprocess.committee_spread`).

    gamma=True (the model needs an active set: `model.attach_active_set`, `aceserver activeset`)
    adds gamma (N,), the extrapolation grade of each atom (γ ≤ 1 interpolates, 1-5 mild
    extrapolation, > 5 unreliable), and max_gamma (float). It costs about n_functions² flops per
    atom, so gamma_every=n computes it on every n-th calculation only (the 1st, the n+1-th, ...);
    the other calculations leave gamma and max_gamma out of the results (read them with
    ``calc.results.get("max_gamma")``). Asking for them by name (``calc.get_property("max_gamma",
    atoms)``) computes them whatever gamma_every says.

    skin (Å, default 0.3): successive calls reuse the neighbour search while no atom has moved
    more than skin/2 since it ran (a Verlet list, see aceserver.verlet); 0 searches every call.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, model_or_path, *, committee: bool = True, committee_forces: bool = False,
                 energies_std: bool = False, gamma: bool = False, gamma_every: int = 1, threads=None,
                 skin: float = DEFAULT_SKIN, **kwargs):
        super().__init__(**kwargs)
        self.model = (model_or_path if isinstance(model_or_path, SitePotential)
                      else load_model(model_or_path))
        if isinstance(gamma_every, bool) or not isinstance(gamma_every, int) or gamma_every < 1:
            raise ValueError(f"gamma_every must be a positive integer, got {gamma_every!r}")
        if gamma and self.model.active_set is None:
            # why none is attached (a refused sidecar), as the HTTP 422 and the jobs say it
            why = f" ({self.model.active_set_problem})" if self.model.active_set_problem else ""
            raise NoActiveSetError(f"gamma=True needs an active set, and this model has none{why}: build one "
                                   f"with `aceserver activeset MODEL DATA.xyz` (or `model.attach_active_set`)",
                                   "gamma")
        self.committee = committee            # False skips the members' energies (faster MD)
        self.committee_forces = committee_forces
        self.energies_std = energies_std
        self.gamma, self.gamma_every = gamma, gamma_every
        if gamma:       # so that get_property("max_gamma") works; ASE checks this list first
            self.implemented_properties = [*type(self).implemented_properties, "gamma", "max_gamma"]
        self.calculations = 0                 # calculations done; γ on those with index % gamma_every == 0
        self.threads = threads
        # Verlet list (Å skin; 0 searches every call): successive calls of MD or a relaxation
        # reuse the neighbour search while atoms move less than skin/2
        self.verlet = VerletList(skin) if skin else None

    def check_state(self, atoms, tol=1e-15):
        """What changed since the last calculation, as ASE's compare_atoms (same properties,
        arrays present in only one of the two count as changed), but with exact comparisons:
        ASE's np.allclose checks cost ~0.5 ms per get_* call, as much as evaluating a small cell.
        Differences below tol are reported as changes, which only costs a recomputation."""
        old = self.atoms
        if old is None:
            return list(all_changes)
        changes = [] if same_array(old.cell.array, atoms.cell.array) else ["cell"]
        if not same_array(old.pbc, atoms.pbc):
            changes.append("pbc")
        old_arrays, arrays = old.arrays, atoms.arrays
        for prop in _ARRAYS_COMPARED:
            a, b = old_arrays.get(prop), arrays.get(prop)
            if a is not b and ((a is None) != (b is None) or not same_array(a, b)):
                changes.append(prop)
        return changes

    def get_property(self, name, atoms=None, allow_calculation=True):
        """ASE's contract (`BaseCalculator.get_property`): the cached result when `check_state`
        finds no change, else a calculation on a stored copy of the atoms; arrays are returned as
        copies. The copy is `stored_copy` (the same content as atoms.copy(), 4-8x cheaper) and
        `calculate` gets that copy, so it need not compare the atoms a second time."""
        if name not in self.implemented_properties:
            raise PropertyNotImplementedError(f"{name} property not implemented")
        if atoms is None:
            atoms, system_changes = self.atoms, []
        else:
            system_changes = self.check_state(atoms)
            if system_changes:
                self.atoms, self.results = None, {}
        if name not in self.results:
            if not allow_calculation:
                return None
            if self.use_cache:
                self.atoms = stored_copy(atoms)
                atoms = self.atoms
            self.calculate(atoms, [name], system_changes)
        if name not in self.results:
            raise PropertyNotImplementedError(f"{name} not present in this calculation")
        result = self.results[name]
        return result.copy() if isinstance(result, np.ndarray) else result

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        # ASE's get_property has just stored a copy of these atoms (use_cache); the base class's
        # calculate would copy them again (a third of the calculator's overhead on a 64-atom
        # cell) and create a working directory this calculator never uses. Copy only when the
        # stored atoms differ (a direct call of calculate).
        if atoms is not None and atoms is not self.atoms and (self.atoms is None
                                                              or self.check_state(atoms)):
            self.atoms = stored_copy(atoms)
        atoms = self.atoms
        if atoms is None:
            raise ValueError("no atoms: pass them to calculate() or to a get_* method")
        with_spread = self.energies_std and self.model.committee is not None
        # γ on every gamma_every-th calculation, and whenever it is asked for by name
        with_gamma = self.gamma and (self.calculations % self.gamma_every == 0
                                     or "gamma" in properties or "max_gamma" in properties)
        arrays, cell, pbc = atoms.arrays, atoms.cell.array, atoms.pbc
        res = self.model.evaluate(arrays["numbers"], arrays["positions"], cell, pbc,
                                  committee=self.committee,
                                  committee_forces=self.committee_forces,
                                  energies_committee=with_spread, gamma=with_gamma,
                                  threads=self.threads, verlet=self.verlet)
        self.calculations += 1
        self.results = calculator_results(res, cell, pbc)
        if "stress" in properties and "stress" not in self.results:
            raise PropertyNotImplementedError("stress needs a cell that is periodic in all three "
                                              "directions")


def calculator_results(res, cell, pbc) -> dict:
    """An `Evaluation` of a structure with this cell and pbc as ASE calculator results (the names
    and units of `ACECalculator.results`; stress only for 3-D periodic cells). Also what the jobs'
    batched relaxation serves its optimisers."""
    results = {"energy": res.energy, "free_energy": res.energy, "forces": res.forces,
               "energies": res.energies}
    stress = res.periodic_stress(cell, pbc)
    if stress is not None:
        results["stress"] = stress
    if res.energy_committee is not None:
        results["energy_committee"] = res.energy_committee
        results["energy_std"] = res.energy_std
    if res.energies_committee is not None:
        results["energies_std"] = res.energies_std
    if res.forces_committee is not None:
        results["forces_committee"] = res.forces_committee
        results["forces_std"] = res.forces_std
    if res.gamma is not None:
        results["gamma"] = res.gamma
        results["max_gamma"] = res.max_gamma
    return results
