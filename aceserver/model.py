"""ACEModel: an ace1_model basis with its linear parameters, evaluated through the numba kernels.

E = Σ_i [E0(Z_i) + Σ_n Wpair[n, z_i] Σ_j R^pair_n(r_ij) + Σ_k WB[k, z_i] B_k(i)],
θ = [WB[:,1]; ...; WB[:,NZ]; Wpair[:,1]; ...; Wpair[:,NZ]]   (ace-spec §1.1).
"""
from __future__ import annotations

import threading
from functools import cached_property

import numba
import numpy as np

from .basis.ace1 import ACE1Basis, build_ace1_basis
from .basis.polynomials import natural_spline_coefficients
from .basis.products import a_dense_index, build_product_dag, prune_dag
from .errors import ACEInputError, ModelFileError
from .evaluation import Evaluation
from .io import modelfile
from .kernels import ace as K
from .kernels.neighbours import min_distance, neighbour_list
from .structure import MIN_DISTANCE, prepare, species_lookup

# numba's default threading layer must not be entered by two threads at once: the parallel
# kernel runs under this lock, and a caller that finds it taken uses the serial kernel.
_PARALLEL_LOCK = threading.Lock()
PARALLEL_MIN_ATOMS = 256   # below this, thread start-up and waits cost more than they save


def ace1_model(elements, order, totaldegree, *, E0=None, Eref=None, **kwargs) -> "ACEModel":
    """Build an ACE1-compatible model with zero parameters (keywords as ACEpotentials.jl).

    E0 (alias Eref): one-body energies in eV, a dict {symbol: value} or a list of pairs; missing
    means 0 for every element, as upstream.
    """
    basis = build_ace1_basis(elements, order, totaldegree, **kwargs)
    e0 = E0 if E0 is not None else Eref
    return ACEModel(basis, E0=dict(e0) if e0 is not None else None)


class ACEModel:
    def __init__(self, basis: ACE1Basis, parameters=None, E0=None, committee=None, metadata=None):
        self.basis = basis
        self._lookup = species_lookup(basis.elements)
        self.E0 = {el: 0.0 for el in basis.elements} if E0 is None else dict(E0)
        self.parameters = np.zeros(basis.length_basis) if parameters is None else parameters
        self.committee = committee
        self.metadata = dict(metadata or {})
        self._sha256 = None

    # ---- parameters -----------------------------------------------------------------------
    @property
    def elements(self) -> list[str]:
        return list(self.basis.elements)

    @property
    def rcut(self) -> float:
        return self.basis.rcut

    @property
    def length_basis(self) -> int:
        return self.basis.length_basis

    @property
    def basis_labels(self):
        return self.basis.parameter_labels()

    @property
    def parameters(self) -> np.ndarray:
        return self._theta

    @parameters.setter
    def parameters(self, theta):
        theta = np.array(theta, dtype=np.float64).reshape(-1)
        if theta.shape != (self.length_basis,):
            raise ValueError(f"parameters must have length {self.length_basis}, got {theta.size}")
        if not np.all(np.isfinite(theta)):
            raise ValueError("parameters contain NaN or inf")
        theta.flags.writeable = False        # changes go through the setter (fast form rebuilt)
        self._theta = theta
        self.__dict__.pop("_fast", None)
        self.__dict__.pop("_fast_committee", None)
        self._sha256 = None

    @property
    def E0(self) -> dict:
        return dict(self._E0)

    @E0.setter
    def E0(self, values):
        values = {str(k): float(v) for k, v in dict(values).items()}
        if set(values) != set(self.basis.elements):
            raise ValueError(f"E0 must give exactly the elements {self.basis.elements}, "
                             f"got {sorted(values)}")
        self._E0 = values
        self._e0 = np.array([values[el] for el in self.basis.elements])
        self._sha256 = None

    @property
    def committee(self):
        return self._committee

    @committee.setter
    def committee(self, members):
        if members is not None:
            members = np.array(members, dtype=np.float64)
            if members.ndim != 2 or members.shape[1] != self.length_basis:
                raise ValueError(f"committee must have shape (K, {self.length_basis})")
        self._committee = members
        self.__dict__.pop("_fast_committee", None)
        self._sha256 = None

    # ---- kernel tables ----------------------------------------------------------------------
    @cached_property
    def _static(self) -> dict:
        b = self.basis
        a_map = a_dense_index(b.a_spec, b.nz, b.mb_poly_nodes.shape[1], b.lmax)
        parent, node_a, aa_node = build_product_dag(b.aa_spec)
        return dict(
            mb_t=np.ascontiguousarray(b.mb_transform), pr_t=np.ascontiguousarray(b.pair_transform),
            pair_p=int(b.pair_envelope_p),
            mb_spl=natural_spline_coefficients(b.mb_poly_nodes),
            pair_bspl=natural_spline_coefficients(b.pair_poly_nodes),
            lmax=b.lmax,
            parent=parent, node_a=a_map[node_a], aa_node=aa_node,
            c_ptr=b.coupling_indptr, c_idx=b.coupling_indices, c_val=b.coupling_data)

    def _merge(self, thetas: np.ndarray):
        """Fast form of parameter vectors thetas (M, L): coefficients per product node, set and
        centre species (c^AA = Cᵀ WB[:, z]), pruned, and merged pair splines per species pair."""
        b, s = self.basis, self._static
        nz, nB, n_pair = b.nz, b.n_b, b.n_pair
        M = thetas.shape[0]
        WB = thetas[:, : nz * nB].reshape(M, nz, nB)
        Wpair = thetas[:, nz * nB:].reshape(M, nz, n_pair)
        rows = np.repeat(np.arange(nB), np.diff(s["c_ptr"]))
        nodes = s["aa_node"][s["c_idx"]]
        node_coef = np.zeros((M, nz, len(s["parent"])))
        for m in range(M):
            for z in range(nz):
                np.add.at(node_coef[m, z], nodes, WB[m, z, rows] * s["c_val"])
        keep, parent, node_a, coef = prune_dag(s["parent"], s["node_a"], node_coef)
        # pair: Wpair[z_i, n' * NZ + z_j] weights polynomial n' of channel z_j; splines are
        # linear in their node values, so the weighted sum of splines is one spline
        pspl = s["pair_bspl"]                                     # (n_int, 4, n_pair_poly)
        wp = Wpair.reshape(M, nz, n_pair // nz, nz)               # [m, z_i, n', z_j]
        pair_spl = np.ascontiguousarray(np.einsum("kcn,minj->mijkc", pspl, wp))
        return dict(parent=parent, node_a=node_a, coef=coef, pair_spl=pair_spl)

    @cached_property
    def _fast(self) -> dict:
        return self._merge(self._theta[None, :])

    @cached_property
    def _fast_committee(self) -> dict:
        """The model and every committee member in one fast form (one A/AA pass for all)."""
        return self._merge(np.vstack([self._theta[None, :], self._committee]))

    # ---- evaluation -------------------------------------------------------------------------
    def _neighbours(self, numbers, positions, cell, pbc, n_chunks=1):
        z, pos, cell, pbc = prepare(numbers, positions, cell, pbc, self._lookup, self.elements)
        first, nbr, R = neighbour_list(pos, cell, pbc, self.rcut, n_chunks=n_chunks, sort=False)
        if len(R) and min_distance(R) < MIN_DISTANCE:
            d2 = np.einsum("ij,ij->i", R, R)
            k = int(np.argmin(d2))
            i = int(np.searchsorted(first, k, side="right") - 1)
            raise ACEInputError(f"atoms {i} and {int(nbr[k])} are on top of each other "
                                f"(distance {np.sqrt(d2[k]):.3g} Å)", "positions")
        return z, first, nbr, R

    def _fast_pass(self, z, first, nbr, R, fast, with_grad, parallel):
        """Site energies and pair gradients; `parallel` only while holding _PARALLEL_LOCK."""
        s = self._static
        args = (first, nbr, R, z, self._e0, s["mb_t"], s["mb_spl"], s["lmax"], fast["parent"],
                fast["node_a"], fast["coef"], s["pr_t"], s["pair_p"], fast["pair_spl"], with_grad)
        if parallel:
            return K.fast_parallel(*args, 4 * numba.get_num_threads())
        return K.fast_serial(*args)

    def evaluate(self, numbers, positions, cell=None, pbc=False, *, committee=False,
                 committee_forces=False, forces=True, threads=None) -> Evaluation:
        """Energy (eV), forces (eV/Å), virial (eV) and per-atom energies of one structure.

        threads=1 forces the serial kernel; otherwise large structures use numba's threads.
        committee: also the energy of every committee member (eV); committee_forces: their forces.
        """
        n = len(numbers) if np.ndim(numbers) == 1 else 0
        with_committee = committee and self._committee is not None
        fast = self._fast_committee if with_committee else self._fast
        parallel = threads != 1 and n >= PARALLEL_MIN_ATOMS and _PARALLEL_LOCK.acquire(blocking=False)
        try:
            z, first, nbr, R = self._neighbours(numbers, positions, cell, pbc,
                                                n_chunks=4 * numba.get_num_threads() if parallel else 1)
            E, G = self._fast_pass(z, first, nbr, R, fast, forces, parallel)
        finally:
            if parallel:
                _PARALLEL_LOCK.release()
        if forces:
            F, W = K.scatter_forces_virial(first, nbr, R, G, len(z))
            W = 0.5 * (W + W.T)
        else:
            F, W = np.zeros((len(z), 3)), np.zeros((3, 3))
        result = Evaluation(energy=float(E[0].sum()), forces=F, virial=W, energies=E[0])
        if with_committee:
            result.energy_committee = E[1:].sum(axis=1)
        if committee_forces and self._committee is not None:
            # forces of every member: the basis rows once, contracted with each θ_m
            _, f_rows, _ = self._basis_pass(z, first, nbr, R, with_grad=True)
            result.forces_committee = np.einsum("nal,kl->kna", f_rows, self._committee)
        return result

    def _basis_pass(self, z, first, nbr, R, with_grad=True):
        s = self._static
        return K.basis_rows(first, nbr, R, z, self.basis.nz, s["mb_t"], s["mb_spl"], s["lmax"],
                            s["parent"], s["node_a"], s["aa_node"], s["c_ptr"], s["c_idx"],
                            s["c_val"], s["pr_t"], s["pair_p"], s["pair_bspl"], with_grad)

    def basis_rows(self, numbers, positions, cell=None, pbc=False, *, forces=True):
        """Design rows of θ (E0 excluded): e (L,) eV, f (N, 3, L) eV/Å, v (3, 3, L) eV, so that
        E = θ·e + ΣE0, F = f·θ, W = v·θ. Serial kernel; it releases the GIL, so callers can run
        several structures on threads."""
        z, first, nbr, R = self._neighbours(numbers, positions, cell, pbc)
        return self._basis_pass(z, first, nbr, R, with_grad=forces)

    # ---- files ------------------------------------------------------------------------------
    def to_document(self) -> dict:
        b = self.basis
        enc = modelfile.encode_array
        return {
            "model": "ACE1",
            "basis": {
                "elements": b.elements, "rcut": b.rcut, "pair_envelope_p": b.pair_envelope_p,
                "n_pair": b.n_pair, "n_nodes": int(b.mb_poly_nodes.shape[0]),
                "settings": b.settings, "b_labels": [[list(x) for x in lab] for lab in b.b_labels],
                "mb_transform": enc(b.mb_transform), "pair_transform": enc(b.pair_transform),
                "mb_poly_nodes": enc(b.mb_poly_nodes), "pair_poly_nodes": enc(b.pair_poly_nodes),
                "a_spec": enc(b.a_spec), "aa_spec": enc(b.aa_spec),
                "coupling_indptr": enc(b.coupling_indptr),
                "coupling_indices": enc(b.coupling_indices),
                "coupling_data": enc(b.coupling_data),
            },
            "E0": self.E0,
            "parameters": enc(self._theta),
            "committee": None if self._committee is None else enc(self._committee),
            "metadata": self.metadata,
        }

    @classmethod
    def from_document(cls, doc: dict, source="model file") -> "ACEModel":
        try:
            bd = doc["basis"]
            dec = modelfile.decode_array
            basis = ACE1Basis(
                elements=list(bd["elements"]), rcut=float(bd["rcut"]),
                mb_transform=dec(bd["mb_transform"], "mb_transform"),
                pair_transform=dec(bd["pair_transform"], "pair_transform"),
                pair_envelope_p=int(bd["pair_envelope_p"]),
                mb_poly_nodes=dec(bd["mb_poly_nodes"], "mb_poly_nodes"),
                pair_poly_nodes=dec(bd["pair_poly_nodes"], "pair_poly_nodes"),
                a_spec=dec(bd["a_spec"], "a_spec"), aa_spec=dec(bd["aa_spec"], "aa_spec"),
                coupling_indptr=dec(bd["coupling_indptr"], "coupling_indptr"),
                coupling_indices=dec(bd["coupling_indices"], "coupling_indices"),
                coupling_data=dec(bd["coupling_data"], "coupling_data"),
                b_labels=[[tuple(x) for x in lab] for lab in bd["b_labels"]],
                n_pair=int(bd["n_pair"]), settings=dict(bd.get("settings", {})))
            committee = doc.get("committee")
            return cls(basis, parameters=dec(doc["parameters"], "parameters"), E0=doc["E0"],
                       committee=None if committee is None else dec(committee, "committee"),
                       metadata=doc.get("metadata") or {})
        except (KeyError, TypeError, ValueError) as err:
            if isinstance(err, ModelFileError):
                raise
            raise ModelFileError(f"{source} is inconsistent or incomplete: {err!r}") from None

    def save(self, path) -> str:
        """Write the self-contained model file (JSON); returns its sha256."""
        self._sha256 = modelfile.write(path, self.to_document())
        return self._sha256

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            doc = dict(self.to_document(), format=modelfile.FORMAT,
                       schema_version=modelfile.SCHEMA_VERSION, units=modelfile.UNITS)
            self._sha256 = modelfile.content_hash(doc)
        return self._sha256

    def info(self) -> dict:
        return {"species": self.elements, "rcut": self.rcut, "length_basis": self.length_basis,
                "n_manybody": self.basis.n_b, "n_pair": self.basis.n_pair, "E0": self.E0,
                "committee_size": 0 if self._committee is None else int(len(self._committee)),
                "sha256": self.sha256, "settings": self.basis.settings,
                "metadata": self.metadata, "units": modelfile.UNITS}


def load_model(path) -> ACEModel:
    """Load a model file written by `ACEModel.save` (no basis is rebuilt)."""
    doc = modelfile.read(path)
    model = ACEModel.from_document(doc, source=str(path))
    model._sha256 = doc["sha256"]
    return model
