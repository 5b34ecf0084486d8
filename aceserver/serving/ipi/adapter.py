"""The model behind the socket: i-PI's atomic units and layouts in, ``model.evaluate`` out.

The protocol never sends species, so they come from a template structure whose atoms are
in the same order as the server's.
"""
from __future__ import annotations

import json

import numpy as np
from ase import units

from aceserver.evaluation.verlet import VerletList

from .driver import TemplateMismatch

# ASE's constants, so that a round trip through ASE's SocketIOCalculator is exact;
# i-PI's own constants differ from these by ~1e-8.
BOHR = units.Bohr  # Å
HARTREE = units.Hartree  # eV

EXTRAS = ("energies", "committee")
# Per-atom energies are opt-in: formatting floats as JSON costs ~0.3 µs each (20-40 µs per
# call at 64 atoms, more than the whole socket round trip), and i-PI parses them every call.
DEFAULT_EXTRAS = ("committee",)


class ACEPotential:
    """Adapt an ACE model (anything with the contract's ``evaluate``) to the i-PI wire.

    ``compute(h, q)`` takes the cell ``h`` (3x3 Bohr, lattice vectors as columns) and the
    positions (nat, 3) Bohr, and returns the energy (Hartree), forces (Hartree/Bohr), the
    virial W = -σV (Hartree, symmetric) and the extras: a JSON object (never a bare value,
    never a "raw" key: either makes i-PI 3.3's parser raise and hang) with

    * ``energies``: per-atom energies, Hartree;
    * ``committee_pot`` (Hartree) and ``committee_uncertainty`` (their spread, Hartree: the
      population standard deviation sqrt(Σ_k (E_k - Ē)² / K), ddof 0, as over HTTP and in
      ``ACECalculator``; see ``aceserver.evaluation.postprocess``) when the model has a
      committee. These are the keys i-PI's ``<ffcommittee parse_json="true">`` reads.

    ``extras`` selects which of those are sent (a subset of EXTRAS); with nothing to send
    the extras are an empty string.
    """

    def __init__(self, model, numbers, pbc, extras=DEFAULT_EXTRAS, template_name: str = "the structure file"):
        self.model = model
        self.numbers = np.asarray(numbers, dtype=np.int64).copy()
        self.pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        self.natoms = len(self.numbers)
        self.template_name = template_name
        extras = tuple(extras)
        bad = set(extras) - set(EXTRAS)
        if bad:
            raise ValueError(f"unknown extras {sorted(bad)}; choose from {EXTRAS}")
        self.send_energies = "energies" in extras
        self.send_committee = "committee" in extras and getattr(model, "committee", None) is not None
        # one connection follows one trajectory: reuse its neighbour search between steps
        self.verlet = VerletList()

    @classmethod
    def from_atoms(cls, model, atoms, **kwargs) -> "ACEPotential":
        return cls(model, atoms.numbers, atoms.pbc, **kwargs)

    def evaluate_atoms(self, atoms):
        """Evaluate a structure in ASE units: checks the template (elements the model lacks
        raise UnknownElementError) and compiles the kernels before the server waits on us."""
        return self.model.evaluate(self.numbers, atoms.positions, atoms.cell.array, self.pbc,
                                   committee=self.send_committee)

    def compute(self, h: np.ndarray, positions: np.ndarray):
        if len(positions) != self.natoms:
            raise TemplateMismatch(
                f"the server sent {len(positions)} atoms, but {self.template_name} has "
                f"{self.natoms}; they must be the same atoms in the same order", field="positions")
        ev = self.model.evaluate(self.numbers, positions * BOHR, h.T * BOHR, self.pbc,
                                 committee=self.send_committee, verlet=self.verlet)
        # i-PI keeps only the upper triangle, so the virial must be symmetric: the Evaluation's is
        # (SitePotential.evaluate symmetrises it). Symmetrising again here, 0.5 * (W + W.T) of a
        # symmetric W, gave the same bits, so it was dropped.
        return (ev.energy / HARTREE, ev.forces * (BOHR / HARTREE), ev.virial / HARTREE, self._extras(ev))

    def _extras(self, ev) -> str:
        extras = {}
        if self.send_energies:
            extras["energies"] = (np.asarray(ev.energies) / HARTREE).tolist()
        if self.send_committee and ev.energy_committee is not None:
            extras["committee_pot"] = (np.asarray(ev.energy_committee) / HARTREE).tolist()
            # the one committee spread (evaluation.postprocess: population std, ddof 0), in Hartree
            extras["committee_uncertainty"] = ev.energy_std / HARTREE
        return json.dumps(extras) if extras else ""

