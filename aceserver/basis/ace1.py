"""Assemble the full ace1_model basis definition from the keyword arguments (ace-spec §1, §9.1).

The result, `ACE1Basis`, holds plain arrays only: it is what the model file stores, so a saved
model never depends on re-running this construction.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .bondlengths import pair_r0
from .coupling import coupled_block
from .polynomials import jacobi_orthonormal, legendre_orthonormal, spline_nodes
from .spec import LevelRule, max_levels, product_blocks, radial_spec
from .transforms import AgnesiTransform


@dataclass
class ACE1Basis:
    elements: list[str]
    rcut: float                          # Å, neighbour-list cutoff (max over pairs)
    mb_transform: np.ndarray             # (NZ, NZ, 7) Agnesi params, many-body radials
    pair_transform: np.ndarray           # (NZ, NZ, 7) Agnesi params, pair basis
    pair_envelope_p: int                 # ACE1 pair envelope exponent
    mb_poly_nodes: np.ndarray            # (n_nodes, n_poly) orthonormal Jacobi(4,4) at the nodes
    pair_poly_nodes: np.ndarray          # (n_nodes, n_pair_poly) orthonormal Legendre at the nodes
    a_spec: np.ndarray                   # (nA, 3) int: combined n, l, m
    aa_spec: np.ndarray                  # (nAA, max_order) int: sorted A indices, -1 padded
    coupling_indptr: np.ndarray          # CSR of C (nB x nAA): B = C · AA
    coupling_indices: np.ndarray
    coupling_data: np.ndarray
    b_labels: list                       # (n, l) list of each B function
    n_pair: int                          # pair functions per centre species (= maxq · NZ)
    settings: dict = field(default_factory=dict)   # constructor keywords, for provenance

    @property
    def nz(self) -> int:
        return len(self.elements)

    @property
    def n_b(self) -> int:
        return len(self.coupling_indptr) - 1

    @property
    def length_basis(self) -> int:
        return self.nz * (self.n_b + self.n_pair)

    @property
    def lmax(self) -> int:
        return int(self.a_spec[:, 1].max()) if len(self.a_spec) else 0

    def parameter_labels(self) -> list[list[tuple[int, int]]]:
        """(n, l) lists in θ order [WB[:,1]..WB[:,NZ], Wpair[:,1]..Wpair[:,NZ]]."""
        pair = [[(n, 0)] for n in range(1, self.n_pair + 1)]
        return [list(map(tuple, b)) for b in self.b_labels] * self.nz + pair * self.nz


def _check_keywords(kw):
    for bad in ("pure2b", "delete2b", "pure"):
        if kw.get(bad):
            raise ValueError(f"{bad}=True is not supported (as in ACEpotentials.jl)")
    if kw.get("ZBL"):
        raise ValueError("ZBL=True is not supported: upstream marks it experimental and its force "
                         "path is broken (ace-spec §1.12)")
    if tuple(kw.get("envelope", ("x", 2, 2))) != ("x", 2, 2):
        raise ValueError("only envelope=('x', 2, 2), i.e. (1 - y²)², is supported (as upstream)")


def _transform_tag(value, default):
    value = tuple(default if value is None else value)
    if len(value) != 3 or value[0] != "agnesi":
        raise ValueError(f"transform must be ('agnesi', p, q), got {value!r}")
    p, q = int(value[1]), int(value[2])
    if not 1 <= p <= q:
        raise ValueError(f"Agnesi transform needs 1 <= p <= q, got p={p}, q={q}")
    return p, q


def build_ace1_basis(elements, order, totaldegree, *, rcut=None, r0="bondlen", rin=0.0, wL=1.5,
                     transform=None, pair_transform=None, pair_degree="totaldegree",
                     pair_envelope=("r", 2), n_nodes=100, **kw) -> ACE1Basis:
    """Build the ace1_model basis; keywords and defaults as ACEpotentials.jl's `ace1_model`."""
    t0 = time.perf_counter()
    _check_keywords(kw)
    unknown = set(kw) - {"pure2b", "delete2b", "pure", "ZBL", "envelope", "variable_cutoffs",
                         "rbasis", "pair_basis", "pair_rin", "pair_rcut"}
    if unknown:
        raise TypeError(f"unknown ace1_model keyword(s): {', '.join(sorted(unknown))}")
    if kw.get("variable_cutoffs"):
        raise ValueError("variable_cutoffs=True is not supported yet")
    elements = [str(e) for e in elements]
    if len(set(elements)) != len(elements) or not elements:
        raise ValueError(f"elements must be a non-empty list of distinct symbols, got {elements}")
    order = int(order)
    if order < 1:
        raise ValueError("order must be >= 1")
    nz = len(elements)
    levels = max_levels(totaldegree, order)
    maxdeg = max(levels)

    # r0 per pair and one cutoff for all pairs (upstream: max over pairs of 2.5 r0)
    bond_r0 = np.array([[pair_r0(a, b) for b in elements] for a in elements])
    if isinstance(r0, str):
        if r0 != "bondlen":
            raise ValueError(f"r0 must be 'bondlen', a number or a dict, got {r0!r}")
        r0_mat = bond_r0
    elif isinstance(r0, dict):
        r0_mat = np.array([[float(r0.get((a, b), r0.get((b, a)))) for b in elements] for a in elements])
    else:
        r0_mat = np.full((nz, nz), float(r0))
    if rcut is None:
        rcut = float((2.5 * bond_r0).max())
    rcut = float(rcut)
    if not (rcut > rin >= 0.0):
        raise ValueError(f"need rcut > rin >= 0, got rcut={rcut}, rin={rin}")
    p_mb, q_mb = _transform_tag(transform, ("agnesi", 2, 4))
    p_pr, q_pr = _transform_tag(pair_transform, ("agnesi", 1, 3))
    if tuple(pair_envelope)[0] not in ("r", "r_ace1"):
        raise ValueError(f"pair_envelope must be ('r', p), got {pair_envelope!r}")
    pair_p = int(tuple(pair_envelope)[1])
    mb_t = np.array([[AgnesiTransform(p_mb, q_mb, r0_mat[i, j], rin, rcut).params()
                      for j in range(nz)] for i in range(nz)])
    pr_t = np.array([[AgnesiTransform(p_pr, q_pr, r0_mat[i, j], rin, rcut).params()
                      for j in range(nz)] for i in range(nz)])

    # one-particle and product specifications
    level = LevelRule(nz, wL)
    rspec = radial_spec(level, maxdeg)
    rspec_by_level = sorted(rspec, key=lambda nl: level(*nl))
    blocks = product_blocks(level, rspec_by_level, levels)

    # couple every block; identical factors get the same group id
    rows_aa, rows_coef, labels = [], [], []
    for nls in blocks:
        fac = sorted(nls, key=lambda nl: (nl[1], nl[0]))
        groups = tuple(fac.index(f) for f in fac)
        C, reps = coupled_block(tuple(l for _, l in fac), groups)
        if C.shape[0] == 0:
            continue
        cols = [tuple(sorted((n, l, m) for (n, l), m in zip(fac, ms))) for ms in reps]
        for k in range(C.shape[0]):
            nzc = np.flatnonzero(C[k])
            rows_aa.append([cols[c] for c in nzc])
            rows_coef.append(C[k, nzc])
            labels.append([(n, l) for (n, l, _) in cols[nzc[0]]])

    # A functions actually used, in lexicographic (n, l, m) order; AA as sorted A-index tuples
    used_a = sorted({nlm for row in rows_aa for col in row for nlm in col})
    a_index = {nlm: i for i, nlm in enumerate(used_a)}
    aa_list, aa_index = [], {}
    indptr, indices, data = [0], [], []
    for row, coef in zip(rows_aa, rows_coef):
        for col, c in zip(row, coef):
            key = tuple(sorted(a_index[nlm] for nlm in col))
            if key not in aa_index:
                aa_index[key] = len(aa_list)
                aa_list.append(key)
            indices.append(aa_index[key])
            data.append(c)
        indptr.append(len(indices))
    aa_arr = -np.ones((len(aa_list), order), dtype=np.int64)
    for i, t in enumerate(aa_list):
        aa_arr[i, :len(t)] = t

    # radial tables: polynomial values on the spline nodes (splines are built from these)
    nodes = spline_nodes(n_nodes)
    n_poly = max(((n - 1) // nz + 1 for n, _, _ in used_a), default=1)
    n_pair_poly = math.ceil(maxdeg) if pair_degree == "totaldegree" else int(math.ceil(pair_degree))
    settings = dict(elements=elements, order=order, totaldegree=list(levels), rcut=rcut,
                    r0=(r0 if isinstance(r0, str) else r0_mat.tolist()), rin=rin, wL=wL,
                    transform=["agnesi", p_mb, q_mb], pair_transform=["agnesi", p_pr, q_pr],
                    pair_degree=n_pair_poly, pair_envelope=["r", pair_p], n_nodes=n_nodes,
                    build_seconds=time.perf_counter() - t0)
    return ACE1Basis(
        elements=elements, rcut=rcut, mb_transform=mb_t, pair_transform=pr_t,
        pair_envelope_p=pair_p,
        mb_poly_nodes=jacobi_orthonormal(n_poly, nodes, 4.0, 4.0),
        pair_poly_nodes=legendre_orthonormal(n_pair_poly, nodes),
        a_spec=np.array(used_a, dtype=np.int64).reshape(-1, 3), aa_spec=aa_arr,
        coupling_indptr=np.array(indptr, dtype=np.int64),
        coupling_indices=np.array(indices, dtype=np.int64),
        coupling_data=np.array(data, dtype=np.float64),
        b_labels=labels, n_pair=n_pair_poly * nz, settings=settings)
