"""A tiny linear pair-potential model that follows the core's model contract (CONTRACT.md).

Used to test the fitting pipeline independently of the ACE basis: φ_k(r) = (1 - r/rc)^(k+2) per
unordered element pair; E = Σ E0 + ½ Σ_{i≠j} Σ_k θ_k φ_k(r_ij). Forces and virials are analytic.
"""
from __future__ import annotations

import json

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.neighborlist import neighbor_list

from aceserver.errors import ACEInputError, UnknownElementError
from aceserver.evaluation import Evaluation


class ToyModel:
    def __init__(self, elements=("Si",), nfun=4, rcut=4.0, E0=None):
        self.elements = list(elements)
        self.nfun = nfun
        self.rcut = float(rcut)
        nz = len(self.elements)
        self.pairs = [(a, b) for a in range(nz) for b in range(a, nz)]
        self.length_basis = nfun * len(self.pairs)
        self.parameters = np.zeros(self.length_basis)
        self.E0 = {el: 0.0 for el in self.elements} if E0 is None else dict(E0)
        self.committee = None
        self.metadata = {}
        self.basis_labels = [[(k + 1, 0)] for _ in self.pairs for k in range(nfun)]

    # --- basis mode -----------------------------------------------------------------------
    def _zidx(self, numbers):
        idx = []
        for z in numbers:
            sym = chemical_symbols[int(z)]
            if sym not in self.elements:
                raise UnknownElementError(f"unknown element {sym}", field="numbers")
            idx.append(self.elements.index(sym))
        return np.array(idx)

    def basis_rows(self, numbers, positions, cell, pbc):
        numbers = np.asarray(numbers)
        positions = np.asarray(positions, float)
        if not np.all(np.isfinite(positions)):
            raise ACEInputError("positions contain NaN", field="positions")
        zi = self._zidx(numbers)
        n = len(numbers)
        L = self.length_basis
        e = np.zeros(L)
        f = np.zeros((n, 3, L))
        v = np.zeros((3, 3, L))
        atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
        I, J, d, D = neighbor_list("ijdD", atoms, self.rcut)
        for i, j, r, R in zip(I, J, d, D):
            a, b = sorted((zi[i], zi[j]))
            off = self.pairs.index((a, b)) * self.nfun
            x = 1.0 - r / self.rcut
            for k in range(self.nfun):
                p = k + 2
                phi = x ** p
                dphi = -p * x ** (p - 1) / self.rcut
                e[off + k] += 0.5 * phi
                g = 0.5 * dphi * R / r          # ∂(½φ)/∂R_ij, R_ij = r_j - r_i
                f[j, :, off + k] -= g
                f[i, :, off + k] += g
                v[:, :, off + k] -= np.outer(g, R)
        return e, f, v

    def evaluate(self, numbers, positions, cell, pbc, committee=False, committee_forces=False):
        e, f, v = self.basis_rows(numbers, positions, cell, pbc)
        e0 = sum(self.E0[chemical_symbols[int(z)]] for z in numbers)
        E = float(e @ self.parameters + e0)
        n = len(numbers)
        ec = None
        if committee and self.committee is not None:
            ec = self.committee @ e + e0
        return Evaluation(energy=E, forces=f @ self.parameters, virial=v @ self.parameters,
                          energies=np.full(n, E / n), energy_committee=ec)

    # --- file -------------------------------------------------------------------------------
    def save(self, path):
        with open(path, "w") as fh:
            json.dump({"toy": True, "elements": self.elements, "nfun": self.nfun, "rcut": self.rcut,
                       "E0": self.E0, "parameters": self.parameters.tolist(),
                       "committee": None if self.committee is None else np.asarray(self.committee).tolist(),
                       "metadata": self.metadata}, fh)

    @classmethod
    def load(cls, path):
        with open(path) as fh:
            d = json.load(fh)
        m = cls(d["elements"], d["nfun"], d["rcut"], d["E0"])
        m.parameters = np.array(d["parameters"])
        m.committee = None if d["committee"] is None else np.array(d["committee"])
        m.metadata = d["metadata"]
        return m


def synthetic_configs(model: ToyModel, theta, n=12, seed=0, E0=None):
    """Rattled fcc-ish clusters in periodic cells labelled by ``model`` with parameters ``theta``."""
    from ase.build import bulk
    from aceserver.fitting.data import Config

    rng = np.random.default_rng(seed)
    saved = model.parameters
    model.parameters = np.asarray(theta, float)
    if E0 is not None:
        model.E0 = dict(E0)
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.0 + 0.1 * rng.random(), cubic=True)
        atoms.rattle(0.1, seed=int(rng.integers(1 << 30)))
        nums = np.array([model.elements[int(rng.integers(len(model.elements)))] for _ in atoms])
        atoms.set_chemical_symbols(nums)
        r = model.evaluate(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc)
        out.append(Config(numbers=atoms.numbers.copy(), positions=atoms.positions.copy(),
                          cell=atoms.cell[:].copy(), pbc=atoms.pbc.copy(), energy=r.energy,
                          forces=r.forces, virial=r.virial, config_type="a" if k % 2 else "b",
                          source="synthetic", frame=k))
    model.parameters = saved
    return out
