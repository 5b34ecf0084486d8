"""The model behind the socket: i-PI's atomic units and layouts in, ``model.evaluate`` out.

The protocol never sends species, so they come from a template structure whose atoms are
in the same order as the server's.
"""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
from ase import units

from aceserver.errors import NoActiveSetError
from aceserver.evaluation.verlet import VerletList

from .driver import TemplateMismatch

# ASE's constants, so that a round trip through ASE's SocketIOCalculator is exact;
# i-PI's own constants differ from these by ~1e-8.
BOHR = units.Bohr  # Å
HARTREE = units.Hartree  # eV

EXTRAS = ("energies", "committee", "gamma", "max_gamma", "energies_std", "forces_std")
# Per-atom energies are opt-in: formatting floats as JSON costs ~0.3 µs each (20-40 µs per
# call at 64 atoms, more than the whole socket round trip), and i-PI parses them every call.
DEFAULT_EXTRAS = ("committee",)
PER_ATOM_EXTRAS = ("gamma", "energies_std", "forces_std")
# The extras document is parsed by i-PI on every call for every bead and kept for its outputs:
# the per-atom uncertainty keys (~20 bytes per value) are refused above this many atoms
# (`max_gamma` is one number whatever the size).
MAX_EXTRAS_ATOMS = 10_000


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
    * ``gamma`` (per atom) and ``max_gamma``: the extrapolation grade γ (dimensionless; ≤ 1
      interpolation, 1-5 mild extrapolation, > 5 unreliable), for models with an active set;
      ``max_gamma`` alone sends only the largest. With ``gamma_every=n`` γ is computed on every
      n-th call of this potential (calls 0, n, 2n, ..., counted over all its connections: with
      P beads a step is P calls) and the other calls send NaN: i-PI requires the same keys from
      every bead ("Extras mismatch between beads" otherwise), and NaN says "not computed".
    * ``energies_std`` (per atom, Hartree) and ``forces_std`` (per atom and component,
      Hartree/Bohr): the committee spreads of the site energies and forces (same definition;
      ``forces_std`` evaluates every member's forces, K force passes more per call).

    ``extras`` selects which of those are sent (a subset of EXTRAS); with nothing to send
    the extras are an empty string. Asking for γ without an active set, or for a spread without
    a committee, raises (the default ``committee`` is quietly left out for a model without one);
    per-atom uncertainty keys are refused above MAX_EXTRAS_ATOMS atoms, so the document stays
    bounded. i-PI prints a key with ``<trajectory extra_type="max_gamma">extras</trajectory>``
    (several: ``extra_type="max_gamma, committee_uncertainty"``).
    """

    def __init__(self, model, numbers, pbc, extras=DEFAULT_EXTRAS, template_name: str = "the structure file",
                 gamma_every: int = 1):
        self.model = model
        self.numbers = np.asarray(numbers, dtype=np.int64).copy()
        self.pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
        self.natoms = len(self.numbers)
        self.template_name = template_name
        extras = tuple(extras)
        bad = set(extras) - set(EXTRAS)
        if bad:
            raise ValueError(f"unknown extras {sorted(bad)}; choose from {EXTRAS}")
        if isinstance(gamma_every, bool) or not isinstance(gamma_every, int) or gamma_every < 1:
            raise ValueError(f"gamma_every must be a positive integer, got {gamma_every!r}")
        per_atom = [x for x in PER_ATOM_EXTRAS if x in extras]
        if per_atom and self.natoms > MAX_EXTRAS_ATOMS:
            raise ValueError(f"extras {', '.join(per_atom)} send {self.natoms} atoms' values on every call; at most "
                             f"{MAX_EXTRAS_ATOMS} atoms are allowed (use max_gamma for large structures)")
        has_committee = getattr(model, "committee", None) is not None
        spreads = [x for x in ("energies_std", "forces_std") if x in extras]
        if spreads and not has_committee:
            raise ValueError(f"extras {', '.join(spreads)} need a model with a committee; this one has none")
        self.send_energies = "energies" in extras
        self.send_committee = "committee" in extras and has_committee
        self.send_energies_std = "energies_std" in extras
        self.send_forces_std = "forces_std" in extras
        self.send_gamma = "gamma" in extras                        # per atom, with max_gamma
        self.send_max_gamma = self.send_gamma or "max_gamma" in extras
        if self.send_max_gamma and getattr(model, "active_set", None) is None:
            raise NoActiveSetError("extras gamma and max_gamma need a model with an active set, and this one has "
                                   "none: build one with `aceserver activeset MODEL DATA.xyz`", "extras")
        self.gamma_every = gamma_every
        self._calls = itertools.count()       # thread-safe in CPython: connections share this potential
        # one connection follows one trajectory: reuse its neighbour search between steps
        self.verlet = VerletList()

    @classmethod
    def from_atoms(cls, model, atoms, **kwargs) -> "ACEPotential":
        return cls(model, atoms.numbers, atoms.pbc, **kwargs)

    def evaluate_atoms(self, atoms):
        """Evaluate a structure in ASE units: checks the template (elements the model lacks
        raise UnknownElementError) and compiles the kernels before the server waits on us."""
        return self.model.evaluate(self.numbers, atoms.positions, atoms.cell.array, self.pbc,
                                   committee=self.send_committee, committee_forces=self.send_forces_std,
                                   energies_committee=self.send_energies_std, gamma=self.send_max_gamma)

    def compute(self, h: np.ndarray, positions: np.ndarray):
        if len(positions) != self.natoms:
            raise TemplateMismatch(
                f"the server sent {len(positions)} atoms, but {self.template_name} has "
                f"{self.natoms}; they must be the same atoms in the same order", field="positions")
        with_gamma = self.send_max_gamma and next(self._calls) % self.gamma_every == 0
        ev = self.model.evaluate(self.numbers, positions * BOHR, h.T * BOHR, self.pbc,
                                 committee=self.send_committee, committee_forces=self.send_forces_std,
                                 energies_committee=self.send_energies_std, gamma=with_gamma,
                                 verlet=self.verlet)
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
        if self.send_energies_std:
            extras["energies_std"] = (ev.energies_std / HARTREE).tolist()
        if self.send_forces_std:
            extras["forces_std"] = (ev.forces_std * (BOHR / HARTREE)).tolist()
        if self.send_gamma:
            extras["gamma"] = ev.gamma.tolist() if ev.gamma is not None else [math.nan] * self.natoms
        if self.send_max_gamma:
            extras["max_gamma"] = ev.max_gamma if ev.gamma is not None else math.nan
        return json.dumps(extras) if extras else ""

