"""Per-atom projections of pacemaker `.yace` potentials (`PACEPotential.descriptors`, kernel
`pace_projections`): the descriptor rows behind γ, against independent references.

- Finite differences: column p·n_f + f of atom i is ∂E_i/∂s at s = 1 when every c̃ of function
  f at density p is scaled by s (outside the core-repulsion cut-off and the ZBL switch, where
  their factor is 1). The reference scales the c̃ in the parsed file and evaluates the energy
  pass (its own product DAG, merged over functions), never the projection kernel.
- A linear embedding (F(ρ) = ρ, no core repulsion): the site energy is Σ_f of the row.
- Rotated and permuted copies of a structure.
- pacemaker itself (pyace, test extra): its projections dE_dc of the B-basis (.yaml) map onto
  ours of the converted .yace column by column, and γ with the same active set is the same.

FD tolerance. Along the scaling E_i(s) = const + w F(ρ_p + (s-1) g), smooth, so the central
difference D_h has truncation error h² E'''/6 while D_h - D_2h = -h² E'''/2 + O(h⁴): |D_h - D_2h|
bounds the truncation with a factor 3 to spare. Rounding: E_i is F of sums of ~10⁴ products, so
|δE_i| ≲ c·ε·(Σ_terms |F'·term| + |E_i|), and Σ_terms |F'·term| ≥ ||row||₁; we allow c = 64
(the summation depth log₂ 10⁴ ≈ 14, with room for the cancellations inside each g), i.e.
2·64·ε·(||row||₁ + |E_i|)/h for the difference of two energies over 2h. Each check also asserts
that the column is resolved ten times above its tolerance, so it cannot pass vacuously.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from scipy.spatial.transform import Rotation

from aceserver.pacemaker.potential import PACEPotential, load_yace
from aceserver.pacemaker.yace import FunctionTable

DATA = Path(__file__).parent / "data"
EPS = np.finfo(float).eps
H = 1e-3           # relative scaling step of the FD references


@pytest.fixture(scope="module")
def cu():
    return load_yace(DATA / "Cu-PBE-core-rep.yace")


@pytest.fixture(scope="module")
def ybco():
    return load_yace(DATA / "YBCO.yace")


@pytest.fixture(scope="module")
def cu_cell():
    at = bulk("Cu", "fcc", a=3.615, cubic=True).repeat(2)
    at.positions += 0.12 * np.random.default_rng(3).standard_normal(at.positions.shape)
    return at


@pytest.fixture(scope="module")
def ybco_cell():
    """The reference YBCO cell expanded by 4 %: its closest pair (1.67 Å) then lies beyond every
    ZBL inner cut-off (≤ 1.70 Å), so the switch that multiplies the embedding energy is 1."""
    d = json.loads((DATA / "YBCO_3x3x1.json").read_text())
    at = Atoms(d["symbols"], positions=d["positions"], cell=d["cell"], pbc=d["pbc"])
    at.set_cell(at.cell.array * 1.04, scale_atoms=True)
    return at


def args(at):
    return at.numbers, at.positions, at.cell.array, at.pbc


def site_energies(spec, at):
    return PACEPotential(spec).evaluate(*args(at), forces=False).energies


def scaled(spec, z, f, p, s):
    """A copy of spec with every c̃ of species z's function f at density p times s."""
    out = copy.deepcopy(spec)
    t = out.functions[z]
    t.ctildes[t.comb_owner == f, p] *= s
    return out


def fd_column(pot, at, z, f, p):
    """(D_h, D_2h): central differences of every site energy w.r.t. the scale of (z, f, p)."""
    e = {k: site_energies(scaled(pot.spec, z, f, p, 1 + k * H), at) for k in (-2, -1, 1, 2)}
    return (e[1] - e[-1]) / (2 * H), (e[2] - e[-2]) / (4 * H)


def check_fd(pot, at, D, z, f, p):
    nf = len(pot.spec.functions[z])
    col = D[:, p * nf + f]
    d1, d2 = fd_column(pot, at, z, f, p)
    E = pot.evaluate(*args(at), forces=False).energies
    rounding = 2 * 64 * EPS * (np.abs(D).sum(axis=1) + np.abs(E)) / H
    tol = np.abs(d1 - d2) + rounding
    mine = pot._lookup[at.numbers] == z
    np.testing.assert_array_less(np.abs(col - d1)[mine], tol[mine] + 1e-300)
    # the check is not vacuous: the column is resolved well above the tolerance
    assert np.abs(col[mine]).max() > 10 * tol[mine].max()


def functions_by_rank(table):
    """The first function of each rank."""
    return [int(np.flatnonzero(table.rank == nu)[0]) for nu in np.unique(table.rank)]


def test_sizes_and_layout(cu, ybco):
    assert cu.descriptor_sizes == {"Cu": 2 * len(cu.spec.functions[0])}
    for el, e, t in zip(ybco.elements, ybco.spec.embeddings, ybco.spec.functions):
        assert ybco.descriptor_sizes[el] == e.ndensity * len(t)


def test_fd_cu(cu, cu_cell):
    D = cu.descriptors(*args(cu_cell))
    assert D.shape == (len(cu_cell), cu.descriptor_sizes["Cu"])
    for k, f in enumerate(functions_by_rank(cu.spec.functions[0])):
        check_fd(cu, cu_cell, D, 0, f, k % 2)


def test_fd_ybco(ybco, ybco_cell):
    D = ybco.descriptors(*args(ybco_cell))
    for z in range(len(ybco.elements)):
        fs = functions_by_rank(ybco.spec.functions[z])
        check_fd(ybco, ybco_cell, D, z, fs[-1], z % 2)      # the highest rank
        check_fd(ybco, ybco_cell, D, z, fs[0], (z + 1) % 2)  # a rank-1 function


def linear_cu(cu):
    """Cu-PBE with one density, F(ρ) = ρ (FinnisSinclairShiftedScaled, exponent 1) and no core
    repulsion: E_i = E0 + ρ_1 = E0 + Σ_f projection_f."""
    spec = copy.deepcopy(cu.spec)
    e = spec.embeddings[0]
    e.ndensity, e.params = 1, np.array([[1.0, 1.0]])
    t = spec.functions[0]
    t.ctildes = np.ascontiguousarray(t.ctildes[:, :1])
    for b in spec.bonds.values():
        b.prehc = 0.0
    return PACEPotential(spec)


def test_linear_embedding_rows_sum_to_site_energy(cu, cu_cell):
    pot = linear_cu(cu)
    D = pot.descriptors(*args(cu_cell))
    E = pot.evaluate(*args(cu_cell), forces=False).energies - pot.E0["Cu"]
    # same sum in another order (the energy pass merges the functions' products): rounding
    # bound 64·ε·(Σ|D|) per site
    np.testing.assert_array_less(np.abs(D.sum(axis=1) - E), 64 * EPS * np.abs(D).sum(axis=1))
    assert np.abs(E).min() > 1.0


@pytest.mark.parametrize("which", ["cu", "ybco"])
def test_rotation_and_permutation(which, cu, ybco, cu_cell, ybco_cell):
    pot, at = (cu, cu_cell) if which == "cu" else (ybco, ybco_cell)
    D = pot.descriptors(*args(at))
    rng = np.random.default_rng(5)
    Q = Rotation.random(random_state=11).as_matrix()
    perm = rng.permutation(len(at))
    rot = Atoms(at.numbers[perm], positions=at.positions[perm] @ Q.T, cell=at.cell.array @ Q.T,
                pbc=at.pbc)
    D2 = pot.descriptors(*args(rot))
    # rotated inputs change A by rounding only, and each entry is F' times a sum of products of
    # A's: the difference is bounded by c·ε·Σ|F'·terms| ≥ c·ε·||row||₁, c = 64 as for the FD
    # rounding (measured: ≤ 2·ε·||row||₁ on these cells)
    bound = 64 * EPS * np.abs(D).sum(axis=1, keepdims=True)
    assert (np.abs(D2 - D[perm]) < bound).all()


def subset(table, keep):
    """FunctionTable with only the functions `keep` (bool mask), in order."""
    new = -np.ones(len(table), dtype=np.int64)
    new[keep] = np.arange(int(keep.sum()))
    rows = keep[table.comb_owner]
    return FunctionTable(rank=table.rank[keep], mus=table.mus[keep], ns=table.ns[keep],
                         ls=table.ls[keep], ms=table.ms[rows], comb_owner=new[table.comb_owner[rows]],
                         ctildes=table.ctildes[rows])


def test_species_of_different_sizes_and_atom_subsets(ybco, ybco_cell):
    """Columns past an element's own L are zero; rows of a subset of atoms are those rows."""
    spec = copy.deepcopy(ybco.spec)
    spec.functions[0] = subset(spec.functions[0], spec.functions[0].rank <= 2)
    pot = PACEPotential(spec)
    sizes = pot.descriptor_sizes
    assert sizes["Ba"] < sizes["Cu"]
    D = pot.descriptors(*args(ybco_cell))
    assert D.shape[1] == max(sizes.values())
    ba = ybco_cell.numbers == 56
    assert np.all(D[ba, sizes["Ba"]:] == 0.0) and np.abs(D[ba, : sizes["Ba"]]).max() > 0
    # the Ba columns kept are the full potential's projections times F'(ρ) ratios: check one FD
    check_fd(pot, ybco_cell, D, 0, functions_by_rank(spec.functions[0])[-1], 1)
    idx = np.array([5, 0, 77, 5])
    np.testing.assert_array_equal(pot.descriptors(*args(ybco_cell), atoms=idx), D[idx])


def test_threaded_rows_equal_serial(cu):
    at = bulk("Cu", "fcc", a=3.615, cubic=True).repeat((4, 4, 5))
    at.positions += 0.05 * np.random.default_rng(9).standard_normal(at.positions.shape)
    serial = cu.descriptors(*args(at), threads=1)
    np.testing.assert_array_equal(cu.descriptors(*args(at)), serial)    # each row alone


def test_isolated_atom_has_a_zero_row(cu):
    """An atom without neighbours has ρ = 0 and every product 0: a row of zeros, γ = 0."""
    D = cu.descriptors([29, 29], [[0, 0, 0], [20.0, 0, 0]])
    assert np.all(D == 0.0)


# ---- pacemaker itself (pyace, the [pyace] test extra) ----------------------------------------
def pyace_basis(tmp_path, nradmax_by_orders, lmax_by_orders):
    """A random Cu B-basis potential (pacemaker's .yaml form) and its C-tilde .yace, written by
    pyace; returns (ACEBBasisSet, PACEPotential of the .yace)."""
    pyace = pytest.importorskip("pyace")
    cfg = {"deltaSplineBins": 0.001, "elements": ["Cu"],
           "embeddings": {"ALL": {"npot": "FinnisSinclairShiftedScaled", "ndensity": 2,
                                  "fs_parameters": [1, 1, 1, 0.5],
                                  "rho_core_cut": 200000, "drho_core_cut": 250}},
           "bonds": {"ALL": {"radbase": "ChebExpCos", "radparameters": [5.25], "rcut": 5.0,
                             "dcut": 0.01, "NameOfCutoffFunction": "cos",
                             "core-repulsion": [0.0, 5.0]}},
           "functions": {"ALL": {"nradmax_by_orders": nradmax_by_orders,
                                 "lmax_by_orders": lmax_by_orders}}}
    np.random.seed(0)             # pyace draws the random coefficients from numpy's global state
    bconf = pyace.create_multispecies_basis_config(cfg, func_coefs_initializer="random")
    bb = pyace.ACEBBasisSet(bconf)
    bb.to_ACECTildeBasisSet().save_yaml(str(tmp_path / "b.yace"))
    return bb, load_yace(tmp_path / "b.yace")


def pyace_calculator(bb, tmp_path, inverse=None):
    """pyace's B-basis evaluator with an active set: `inverse` (A⁻¹), or the identity of pacemaker's
    full size (n_functions·ndensity) only to make it compute the full projections dE_dc."""
    pyace = pytest.importorskip("pyace")
    n = (len(bb.basis_rank1[0]) + len(bb.basis[0])) * bb.map_embedding_specifications[0].ndensity
    path = tmp_path / "active.asi.npz"
    np.savez(path, Cu=np.eye(n) if inverse is None else inverse)
    ev = pyace.ACEBEvaluator(bb)
    ev.load_active_set(str(path))
    return pyace.ACECalculator(ev), ev     # the calculator does not own its evaluator: keep both


def pyace_rows(calc_ev, at, rcut):
    from pyace.atomicenvironment import aseatoms_to_atomicenvironment
    calc = calc_ev[0]
    calc.compute(aseatoms_to_atomicenvironment(at, cutoff=rcut), compute_projections=True)
    return np.array(calc.dE_dc), np.array(calc.gamma_grade)


def cu_cells(seed, n, amp):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        at = bulk("Cu", "fcc", a=3.5 + 0.1 * rng.random(), cubic=True).repeat(2)
        at.positions += amp * rng.standard_normal(at.positions.shape)
        out.append(at)
    return out


def test_columns_are_pacemakers_projections_times_coefficients(tmp_path):
    """pacemaker's full projections of B function k at density p are dE_dc[p·n_B + k] =
    F_p'(ρ_p)·B_k. The .yace C-tilde function j holds c̃ = Σ_{k in j} c_{k,p} (generalised CG of
    k), summed over the B functions k with j's (μ, n, l) (several couplings of the same
    (μ, n, l), from rank 4 on), so our column p·n_j + j is Σ_{k in j} c_{k,p} dE_dc[p·n_B + k].
    Rank 4 with l up to 1 has such merged functions; the test asserts one is there."""
    bb, pot = pyace_basis(tmp_path, [6, 3, 2, 2], [0, 2, 2, 1])
    funcs = list(bb.basis_rank1[0]) + list(bb.basis[0])
    nb, P = len(funcs), 2
    t = pot.spec.functions[0]
    nc = len(t)
    key = {}
    for j in range(nc):
        nu = int(t.rank[j])
        key[(tuple(t.mus[j, :nu]), tuple(t.ns[j, :nu] + 1), tuple(t.ls[j, :nu]))] = j
    owner = np.array([key[(tuple(f.mus), tuple(f.ns), tuple(f.ls))] for f in funcs])
    assert nc < nb and np.all(np.diff(owner) >= 0)      # merged, and pacemaker's order kept
    M = np.zeros((P * nb, P * nc))
    for k, f in enumerate(funcs):
        for p in range(P):
            M[p * nb + k, p * nc + owner[k]] = f.coeffs[p]
    calc = pyace_calculator(bb, tmp_path)
    for at in cu_cells(1, 2, 0.15):
        theirs = pyace_rows(calc, at, pot.rcut)[0] @ M
        ours = pot.descriptors(*args(at))
        # two evaluators of the same sums (same radial splines) in different orders
        bound = 64 * EPS * np.abs(ours).sum(axis=1, keepdims=True)
        assert (np.abs(ours - theirs) < bound).all()


def test_gamma_equals_pyace_with_the_same_active_set(tmp_path):
    """Rank ≤ 3: every C-tilde function is one B function, so our columns are pacemaker's full
    projections scaled by the constants c_{k,p}, and γ (unchanged by constant column scaling)
    must equal pyace's with the active set of the same training atoms (pacemaker's MaxVol)."""
    from pyace.activelearning import maxvol as pyace_maxvol
    bb, pot = pyace_basis(tmp_path, [4, 2, 1], [0, 2, 1])
    train = cu_cells(0, 4, 0.1)
    calc = pyace_calculator(bb, tmp_path)
    theirs = np.vstack([pyace_rows(calc, at, pot.rcut)[0] for at in train])
    ours = np.vstack([pot.descriptors(*args(at)) for at in train])
    rows, _ = pyace_maxvol(theirs.copy(), tol=1.001, max_iters=300)
    calc = pyace_calculator(bb, tmp_path, inverse=np.linalg.inv(theirs[rows]))
    A = ours[rows]
    pot.attach_active_set({"Cu": np.linalg.inv(A)})
    # γ = max|b A⁻¹| moves by ~κ·δ for relative rounding δ of the rows (64·ε, as above) with κ
    # the condition number of A with equilibrated columns (rounding is relative per column)
    kappa = np.linalg.cond(A / np.abs(A).max(axis=0))
    for at in cu_cells(5, 3, 0.25):
        g_theirs = pyace_rows(calc, at, pot.rcut)[1]
        g_ours = pot.evaluate(*args(at), gamma=True).gamma
        np.testing.assert_allclose(g_ours, g_theirs, rtol=64 * EPS * kappa, atol=0)
        assert g_theirs.max() > 5      # the test cells extrapolate: large γ are compared too


def test_core_cutoff_is_not_applied_as_in_pacemaker(tmp_path):
    """Inside the core-repulsion cut-off (ρ_core ≥ rho_core_cut, where f_cut = 0 and the site
    energy is the core repulsion alone, independent of every c̃) the projections are still
    w_p F_p'(ρ_p)·g: pacemaker's dE_dc leaves f_cut out too, so γ keeps flagging such atoms."""
    pyace = pytest.importorskip("pyace")
    cfg = {"deltaSplineBins": 0.001, "elements": ["Cu"],
           "embeddings": {"ALL": {"npot": "FinnisSinclairShiftedScaled", "ndensity": 2,
                                  "fs_parameters": [1, 1, 1, 0.5],
                                  "rho_core_cut": 2.0, "drho_core_cut": 1.5}},
           "bonds": {"ALL": {"radbase": "ChebExpCos", "radparameters": [5.25], "rcut": 5.0,
                             "dcut": 0.01, "NameOfCutoffFunction": "cos",
                             "core-repulsion": [50.0, 1.0], "inner_cutoff_type": "density"}},
           "functions": {"ALL": {"nradmax_by_orders": [4, 2, 1], "lmax_by_orders": [0, 2, 1]}}}
    np.random.seed(0)
    bb = pyace.ACEBBasisSet(pyace.create_multispecies_basis_config(
        cfg, func_coefs_initializer="random"))
    bb.to_ACECTildeBasisSet().save_yaml(str(tmp_path / "c.yace"))
    pot = load_yace(tmp_path / "c.yace")
    funcs = list(bb.basis_rank1[0]) + list(bb.basis[0])
    scale = np.concatenate([[f.coeffs[p] for f in funcs] for p in range(2)])
    calc = pyace_calculator(bb, tmp_path)
    at = bulk("Cu", "fcc", a=2.6, cubic=True)        # nearest neighbours at 1.84 Å: ρ_core ≈ 10
    e = [site_energies(scaled(pot.spec, 0, 0, 0, s), at) for s in (0.5, 2.0)]
    assert np.array_equal(e[0], e[1])                # f_cut = 0: c̃ does not enter the energy
    ours = pot.descriptors(*args(at))
    theirs = pyace_rows(calc, at, pot.rcut)[0] * scale
    assert np.abs(ours).max() > 0
    assert (np.abs(ours - theirs) < 64 * EPS * np.abs(ours).sum(axis=1, keepdims=True)).all()
