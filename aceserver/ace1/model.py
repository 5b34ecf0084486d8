"""ACEModel: an ace1_model basis with its linear parameters, evaluated through the numba kernels.

E = Σ_i [E0(Z_i) + Σ_n Wpair[n, z_i] Σ_j R^pair_n(r_ij) + Σ_k WB[k, z_i] B_k(i)],
θ = [WB[:,1]; ...; WB[:,NZ]; Wpair[:,1]; ...; Wpair[:,NZ]]   (ace-spec §1.1).
"""
from __future__ import annotations

from functools import cached_property

import numpy as np

from ..basis.ace1 import ACE1Basis, build_ace1_basis
from ..basis.polynomials import natural_spline_coefficients
from ..basis.products import a_dense_index, build_product_dag, prune_dag
from ..errors import ModelFileError
from ..evaluation.site_potential import SitePotential
from ..io import modelfile
from ..kernels.basis_rows import basis_rows, site_descriptors, site_descriptors_parallel
from ..kernels.site_tables import DescriptorTables, SiteTables, a_fields, unused
from ..structure import species_lookup


def ace1_model(elements, order, totaldegree, *, E0=None, Eref=None, **kwargs) -> "ACEModel":
    """Build an ACE1-compatible model with zero parameters (keywords as ACEpotentials.jl).

    E0 (alias Eref): one-body energies in eV, a dict {symbol: value} or a list of pairs; missing
    means 0 for every element, as upstream.
    """
    basis = build_ace1_basis(elements, order, totaldegree, **kwargs)
    e0 = E0 if E0 is not None else Eref
    return ACEModel(basis, E0=dict(e0) if e0 is not None else None)


class ACEModel(SitePotential):
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
            c_ptr=b.coupling_indptr, c_idx=b.coupling_indices, c_val=b.coupling_data,
            c_node=np.ascontiguousarray(aa_node[b.coupling_indices]))

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

    def _site_tables(self, fast: dict):
        s, nz = self._static, self.basis.nz
        n_nodes = len(fast["parent"])
        return SiteTables(
            mode=0, e0=self._e0, lmax=s["lmax"], mb_t=s["mb_t"], mb_spl=s["mb_spl"], pr_t=s["pr_t"],
            pair_p=s["pair_p"], pair_spl=fast["pair_spl"], tab=unused(5), tab_h=unused(2),
            tab_rc=unused(2), row_off=np.arange(s["mb_spl"].shape[2], dtype=np.int64),
            row_lmax=used_lmax(fast["node_a"], nz, s["mb_spl"].shape[2], s["lmax"]),
            parent=fast["parent"], node_a=fast["node_a"], node_lo=np.zeros(nz, dtype=np.int64),
            node_hi=np.full(nz, n_nodes, dtype=np.int64), coef=fast["coef"],
            leaf_parent=np.zeros(0, dtype=np.uint32), leaf_a=np.zeros(0, dtype=np.uint32),
            leaf_lo=np.zeros(nz, dtype=np.int64), leaf_hi=np.zeros(nz, dtype=np.int64),
            leaf_coef=np.zeros((nz, 0, fast["coef"].shape[0])),
            emb_kind=unused(1, np.int64), emb_par=unused(3), rho_cut=unused(2), inner=0,
            zin=unused(3))

    @cached_property
    def _fast(self):
        return self._site_tables(self._merge(self._theta[None, :]))

    @cached_property
    def _fast_committee(self):
        """The model and every committee member in one fast form (one A/AA pass for all)."""
        return self._site_tables(self._merge(np.vstack([self._theta[None, :], self._committee])))

    # ---- evaluation (SitePotential.evaluate) ------------------------------------------------
    def _tables(self, committee: bool):
        if committee and self._committee is not None:
            return self._fast_committee
        return self._fast

    def _committee_forces(self, z, first, nbr, R):
        """Forces of every member: the basis rows once, contracted with each θ_m."""
        _, f_rows, _ = self._basis_pass(z, first, nbr, R, with_grad=True)
        return np.einsum("nal,kl->kna", f_rows, self._committee)

    def _basis_pass(self, z, first, nbr, R, with_grad=True):
        s = self._static
        return basis_rows(first, nbr, R, z, self.basis.nz, s["mb_t"], s["mb_spl"], s["lmax"],
                            s["parent"], s["node_a"], s["aa_node"], s["c_ptr"], s["c_idx"],
                            s["c_val"], s["pr_t"], s["pair_p"], s["pair_bspl"], with_grad)

    def basis_rows(self, numbers, positions, cell=None, pbc=False, *, forces=True):
        """Design rows of θ (E0 excluded): e (L,) eV, f (N, 3, L) eV/Å, v (3, 3, L) eV, so that
        E = θ·e + ΣE0, F = f·θ, W = v·θ. Serial kernel; it releases the GIL, so callers can run
        several structures on threads."""
        z, first, nbr, R = self._neighbours(numbers, positions, cell, pbc)
        return self._basis_pass(z, first, nbr, R, with_grad=forces)

    # ---- per-atom descriptors (SitePotential.descriptors) -----------------------------------
    @property
    def descriptor_sizes(self) -> dict[str, int]:
        """Descriptor columns per element: the nB many-body functions and the n_pair pair ones."""
        return {el: self.basis.n_b + self.basis.n_pair for el in self.basis.elements}

    def descriptor_weights(self, theta=None) -> np.ndarray:
        """(NZ, nB + n_pair): the block of θ (default: the model's parameters) that multiplies the
        descriptor row of a site of each centre species, so E = Σ_i D[i]·W[z_i] + Σ_i E0(z_i)."""
        b = self.basis
        theta = self._theta if theta is None else np.asarray(theta, dtype=np.float64)
        nz, nB, n_pair = b.nz, b.n_b, b.n_pair
        return np.hstack([theta[: nz * nB].reshape(nz, nB),
                          theta[nz * nB:].reshape(nz, n_pair)])

    @cached_property
    def _row_tables(self) -> DescriptorTables:
        s = self._static
        return DescriptorTables(s["c_ptr"], s["c_node"], s["c_val"], s["pair_bspl"])

    def _descriptor_tables(self, tables):
        # the coupling addresses the full product DAG: usable by tables from which the merge
        # pruned nothing (dense parameters keep every node, in order); else rows of their own
        return self._row_tables if len(tables.parent) == len(self._static["parent"]) else None

    def _descriptor_rows(self, z, first, nbr, R, atoms, n_chunks=1):
        s, b = self._static, self.basis
        out = np.empty((len(atoms), b.n_b + b.n_pair))
        args = (atoms, first, nbr, R, z, b.nz, s["mb_t"], s["mb_spl"], s["lmax"], s["parent"],
                s["node_a"], s["c_ptr"], s["c_node"], s["c_val"], s["pr_t"], s["pair_p"],
                s["pair_bspl"], out)
        if n_chunks > 1:
            site_descriptors_parallel(*args, n_chunks)
        else:
            site_descriptors(*args)
        return out

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
        el = self.elements
        return {"format": "aceserver-json", "species": el, "rcut": self.rcut,
                "cutoffs": {f"{a}-{b}": self.rcut for a in el for b in el},
                "length_basis": self.length_basis,
                "n_manybody": self.basis.n_b, "n_pair": self.basis.n_pair, "E0": self.E0,
                "committee_size": 0 if self._committee is None else int(len(self._committee)),
                "sha256": self.sha256, "settings": self.basis.settings,
                "metadata": self.metadata, "units": modelfile.UNITS}


def used_lmax(node_a, nz, n_rows, lmax):
    """Per radial n, the largest l of any A[z, n, l, m] the product DAG reads (-1: none): the
    site pass accumulates A and its pullback only up to there."""
    _, n, l, _ = a_fields(np.asarray(node_a, dtype=np.int64).reshape(-1), n_rows, lmax)
    out = np.full(n_rows, -1, dtype=np.int64)
    np.maximum.at(out, n, l)
    return out
