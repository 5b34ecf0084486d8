"""ASE calculator for aceserver models: energy, free_energy, forces, stress, energies (per atom),
plus the committee spread when the model carries a committee. Units: eV, Å, eV/Å, eV/Å³.

Stress and committee spread are read from the `Evaluation` (`aceserver.evaluation.postprocess`
defines them for every front end)."""
from __future__ import annotations

from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .evaluation.site_potential import SitePotential
from .evaluation.verlet import DEFAULT_SKIN, VerletList
from .loading import load_model
from .structure import same_array


class ACECalculator(Calculator):
    """ASE calculator over a potential (`ACEModel`, `PACEPotential`) or a file path (aceserver
    model file or pacemaker `.yace`).

    results: energy, free_energy (eV), forces (eV/Å), stress (eV/Å³, Voigt, periodic cells only),
    energies (eV per atom); with a committee also energy_committee (eV, one per member),
    energy_std (eV) (committee=False skips them), and with committee_forces=True
    forces_committee (K, N, 3) eV/Å; with gamma=True (a model with an active set) gamma (N,), the
    extrapolation grade of every atom (dimensionless, `aceserver.evaluation.uncertainty`). energy_std is the committee spread as HTTP and i-PI report
    it: the population standard deviation sqrt(Σ_k (E_k - Ē)² / K) over the K members (ddof 0;
    `aceserver.evaluation.postprocess.committee_spread`).

    skin (Å, default 0.3): successive calls reuse the neighbour search while no atom has moved
    more than skin/2 since it ran (a Verlet list, see aceserver.verlet); 0 searches every call.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, model_or_path, *, committee: bool = True, committee_forces: bool = False,
                 threads=None, skin: float = DEFAULT_SKIN, gamma: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.model = (model_or_path if isinstance(model_or_path, SitePotential)
                      else load_model(model_or_path))
        self.committee = committee            # False skips the members' energies (faster MD)
        self.committee_forces = committee_forces
        self.gamma = gamma                    # also γ per atom (needs an attached active set)
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
        for prop in all_changes:
            if prop not in ("cell", "pbc"):
                a, b = old.arrays.get(prop), atoms.arrays.get(prop)
                if (a is None) != (b is None) or (a is not None and not same_array(a, b)):
                    changes.append(prop)
        return changes

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        # ASE's get_property has just stored a copy of these atoms (use_cache); the base class's
        # calculate would copy them again (a third of the calculator's overhead on a 64-atom
        # cell) and create a working directory this calculator never uses. Copy only when the
        # stored atoms differ (a direct call of calculate).
        if atoms is not None and (self.atoms is None or self.check_state(atoms)):
            self.atoms = atoms.copy()
        atoms = self.atoms
        if atoms is None:
            raise ValueError("no atoms: pass them to calculate() or to a get_* method")
        res = self.model.evaluate(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc,
                                  committee=self.committee,
                                  committee_forces=self.committee_forces,
                                  threads=self.threads, verlet=self.verlet, gamma=self.gamma)
        self.results = {"energy": res.energy, "free_energy": res.energy, "forces": res.forces,
                        "energies": res.energies}
        stress = res.periodic_stress(atoms.cell.array, atoms.pbc)
        if stress is not None:
            self.results["stress"] = stress
        elif "stress" in properties:
            raise PropertyNotImplementedError("stress needs a cell that is periodic in all three "
                                              "directions")
        if res.energy_committee is not None:
            self.results["energy_committee"] = res.energy_committee
            self.results["energy_std"] = res.energy_std
        if res.forces_committee is not None:
            self.results["forces_committee"] = res.forces_committee
        if res.gamma is not None:
            self.results["gamma"] = res.gamma
