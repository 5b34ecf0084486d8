"""Export a fitted linear ACE model (`ACEModel`, with its pair term) to a pacemaker `.yace` file that
pyace and LAMMPS `pair_style pace` evaluate (format: yace-format.md §2, docs/lammps-export.md),
written by `yace.write_yace`; `save_yace` writes any loaded model (a pacemaker potential as is).

What the file holds, per centre species μ_i (embedding F(ρ) = ρ: FinnisSinclairShiftedScaled with
ndensity 1 and FS_parameters [1, 1]; no core repulsion):

* rank ≥ 2 functions: our many-body products, rewritten exactly as complex products (export_angular),
  on radial functions R_nl = Σ_k c_nk g_k fitted to ours (l-independent, as ours);
* rank-1 functions: the pair potential plus our order-one terms Σ_n c_n A_n00, one radial
  function per (centre, neighbour) species fitted as Σ_k d_k g_k (export_radial);
* E0 per species, exactly.

Only the radial fits are approximate; their measured errors, and the energy/force differences of
pyace against our evaluator when pyace is installed, go into the file's `metadata` key.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..benchmarking import build_structure
from .export_angular import expand_model
from .export_radial import fit_bond, model_pair, model_radials
from .potential import PACEPotential
from .yace import Bond, Embedding, FunctionTable, YaceSpec, write_yace

FORMAT_NOTE = ("exported by aceserver; units eV and Angstrom; angular part exact, radial and pair "
               "functions fitted on [r_min, rcut]: see radial_accuracy and accuracy_vs_pyace")
# Candidates for the ChebExpCos scaling λ (< 0 puts [r_min, rcut] on most of the Chebyshev
# interval, which keeps the fit well conditioned) and the number K of basis functions g_k.
DEFAULT_LAMBDAS = (-1.0, -2.0, -3.0)
DEFAULT_NRADBASE = 60
DEFAULT_DELTA_SPLINE_BINS = 1e-3   # pyace/ML-PACE table spacing (Å): 1e-4 changes nothing we can
                                   # measure here but takes 2.7x the memory (zuo-Si 0.77 GB)


def _linear_embedding() -> Embedding:
    """F(ρ) = ρ (the model is linear): FinnisSinclairShiftedScaled, one density, FS_parameters
    [1, 1]; the core-repulsion energy cut-off far out of reach."""
    return Embedding(kind="FinnisSinclairShiftedScaled", ndensity=1, params=np.array([[1.0, 1.0]]),
                     rho_core_cutoff=100000.0, drho_core_cutoff=250.0)


def _function_table(funcs) -> FunctionTable:
    """One centre species' functions (dicts: mus, ns (0-based), ls per factor; ms, a list of m
    tuples; ctildes, one per m tuple) as the reader's FunctionTable, one density."""
    rank = np.array([len(f["mus"]) for f in funcs], dtype=np.int64)
    rmax = int(rank.max(initial=1))
    mus, ns, ls = (np.full((len(funcs), rmax), -1, dtype=np.int64) for _ in range(3))
    ms, owner, ctildes = [], [], []
    for k, f in enumerate(funcs):
        nu = rank[k]
        mus[k, :nu], ns[k, :nu], ls[k, :nu] = f["mus"], f["ns"], f["ls"]
        ms.extend(list(row) + [0] * (rmax - nu) for row in f["ms"])
        owner.extend([k] * len(f["ms"]))
        ctildes.extend(f["ctildes"])
    return FunctionTable(rank=rank, mus=mus, ns=ns, ls=ls,
                         ms=np.array(ms, dtype=np.int64).reshape(-1, rmax),
                         comb_owner=np.array(owner, dtype=np.int64),
                         ctildes=np.array(ctildes, dtype=float).reshape(-1, 1))


# ---- radial fits ------------------------------------------------------------------------------
def _bond_target(model, order1, zi, zj):
    """Bond (zi, zj)'s functions to fit, as r -> (values, slopes) with columns: our many-body
    radials R_n (n = 0..n_poly-1), then the rank-1 function φ = Σ_n c_n R_n + V (order-one
    terms, c_n = order1[zi, zj, n] with the real Y00 included, plus the pair potential)."""
    s, fast = model._static, model._fast
    c = order1[zi, zj]

    def target(r):
        R, dR = model_radials(r, s["mb_t"], zi, zj, s["mb_spl"])
        V, dV = model_pair(r, s["pr_t"], zi, zj, s["pair_p"], fast.pair_spl)
        return np.column_stack([R, R @ c + V]), np.column_stack([dR, dR @ c + dV])
    return target


def fit_radials(model, order1, *, r_min=None, basis="ChebExpCos", lambdas=DEFAULT_LAMBDAS,
                nradbase=DEFAULT_NRADBASE, delta=DEFAULT_DELTA_SPLINE_BINS, dcut=1e-8):
    """Per bond, the λ with the smallest slope error of the rank-1 (pair) function; returns
    {bond: (λ, r_min, fit)}, fit columns as _bond_target.

    The many-body radials do not steer the choice: their error is set by the periodic part of our
    100-node spline interpolation, which no smooth basis of moderate K represents, and is about
    the same for every candidate λ (docs/lammps-export.md, "Accuracy")."""
    nz = model.basis.nz
    r0 = model.basis.mb_transform[:, :, 3]
    fits = {}
    for zi in range(nz):
        for zj in range(nz):
            rmin = float(0.5 * r0[zi, zj] if r_min is None else r_min)
            if not 0.0 < rmin < model.rcut:
                raise ValueError(f"r_min must lie in (0, rcut = {model.rcut}), got {rmin}")
            target = _bond_target(model, order1, zi, zj)
            cands = [(lam, fit_bond(target, basis, lam, model.rcut, dcut, nradbase, rmin, delta))
                     for lam in lambdas]
            lam, fit = min(cands, key=lambda c: c[1].max_slope_error[-1])
            fits[(zi, zj)] = (lam, rmin, fit)
    return fits


# ---- export -------------------------------------------------------------------------------------
def export_yace(model, path, *, r_min=None, basis="ChebExpCos", lambdas=DEFAULT_LAMBDAS,
                nradbase=DEFAULT_NRADBASE, delta_spline_bins=DEFAULT_DELTA_SPLINE_BINS, dcut=1e-8,
                verify=True) -> dict:
    """Write `model` as a pacemaker .yace file at `path`; returns the metadata written into it.

    r_min (Å): lower end of the radial fits (default 0.5·r0 per species pair); below it the
    exported radials are not controlled. nradbase: K, radial basis functions per species pair.
    basis, lambdas: PACE radial basis and candidate scalings λ (the best per pair is kept).
    delta_spline_bins (Å): spacing of pyace's / ML-PACE's radial tables. dcut (Å): width of
    ChebExpCos's extra cut-off, kept negligible. verify: when pyace is installed, compare its
    energies, forces and stress with ours on two rattled 64-atom cells and store the result
    (`accuracy_vs_pyace`). Returned in addition to the file's metadata: `export_seconds`."""
    t0 = time.perf_counter()
    path = Path(path)
    if path.suffix != ".yace":
        raise ValueError(f"{path}: the file name must end in .yace (LAMMPS picks its reader "
                         "by the extension)")
    K = int(nradbase)
    if K < 1:
        raise ValueError(f"nradbase must be a positive integer, got {nradbase}")
    if basis not in ("ChebExpCos", "ChebPow"):
        raise ValueError(f"basis must be 'ChebExpCos' or 'ChebPow', got {basis!r}")
    lambdas = tuple(float(x) for x in lambdas)
    if not lambdas or any(x == 0.0 or (basis == "ChebPow" and x < 1.0) for x in lambdas):
        raise ValueError(f"lambdas must be nonzero ({basis}: >= 1 for ChebPow), got {lambdas}")
    if not (delta_spline_bins > 0 and dcut > 0):
        raise ValueError(f"delta_spline_bins and dcut must be > 0 Å, got {delta_spline_bins}, {dcut}")
    b, f = model.basis, model._fast
    nz, n_poly, lmax = b.nz, b.mb_poly_nodes.shape[1], b.lmax
    if len(f.leaf_a):            # ace1 tables keep every product as a DAG node, none as a leaf
        raise ValueError("export expects an ace1 model's product DAG without leaf lists")
    ang = expand_model(f.parent, f.node_a, f.coef[0], nz, n_poly, lmax)
    fits = fit_radials(model, ang.order1, r_min=r_min, basis=basis, lambdas=lambdas,
                       nradbase=K, delta=delta_spline_bins, dcut=dcut)
    bonds, radial_acc = {}, {}
    functions = [[] for _ in range(nz)]
    for (zi, zj), (lam, rmin, fit) in fits.items():
        crad, cpair = fit.coefficients[:n_poly], fit.coefficients[n_poly]
        bonds[(zi, zj)] = Bond(          # our radials do not depend on l: the same row for every l
            radbase=basis, nradmax=n_poly, lmax=lmax, nradbase=K, lam=lam,
            crad=np.repeat(crad[:, None, :], lmax + 1, axis=1), prehc=0.0, lambdahc=1.0,
            rcut=float(model.rcut), dcut=float(dcut), rcut_in=0.0, dcut_in=0.0)
        # rank-1 functions: the fitted pair + order-one function of this bond
        for k in range(K):
            functions[zi].append(dict(mus=[zj], ns=[k], ls=[0], ms=[[0]], ctildes=[cpair[k]]))
        radial_acc[f"{b.elements[zi]}-{b.elements[zj]}"] = dict(
            radbasename=basis, radparameter=lam, r_min=rmin,
            manybody_radial_max_error=float(fit.max_error[:n_poly].max()),
            manybody_radial_max_slope_error_per_A=float(fit.max_slope_error[:n_poly].max()),
            pair_max_error_eV=float(fit.max_error[n_poly]),
            pair_max_slope_error_eV_per_A=float(fit.max_slope_error[n_poly]))
    for zi in range(nz):
        for fn in ang.functions[zi]:
            functions[zi].append(dict(mus=fn.mus, ns=fn.ns, ls=fn.ls, ms=fn.ms, ctildes=fn.ctildes))
    spec = YaceSpec(elements=list(b.elements), E0=np.array([model.E0[el] for el in b.elements], dtype=float),
                    delta_spline_bins=float(delta_spline_bins),
                    embeddings=[_linear_embedding() for _ in range(nz)], bonds=bonds,
                    functions=[_function_table(f) for f in functions], inner_cutoff_type="density")
    metadata = dict(
        note=FORMAT_NOTE,
        exported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        model_sha256=model.sha256,
        units=dict(energy="eV", length="Angstrom", force="eV/Angstrom"),
        rcut=float(model.rcut), nradbasemax=int(K), deltaSplineBins=float(delta_spline_bins),
        angular=dict(exact=True, n_functions=int(sum(len(x) for x in ang.functions)),
                     n_ms_combinations=int(ang.n_terms),
                     max_cancelled_nonzero_msum=float(ang.max_dropped_msum),
                     max_imaginary_part=float(ang.max_imag),
                     max_relative_dropped=float(ang.max_relative_dropped_small)),
        radial_accuracy=radial_acc)
    write_yace(spec, path, metadata)
    if verify:
        check = verify_with_pyace(model, path)
        if check is not None:
            metadata["accuracy_vs_pyace"] = check
            write_yace(spec, path, metadata)
    metadata["export_seconds"] = time.perf_counter() - t0
    return metadata


def verify_with_pyace(model, path, structures=None) -> dict | None:
    """max |ΔE|/atom (eV), max |ΔF| (eV/Å) and max |Δσ| (eV/Å³) of pyace on the exported file
    against our evaluator; None when pyace is not installed."""
    try:
        from pyace import PyACECalculator
    except ImportError:
        return None
    if structures is None:
        structures = [build_structure("diamond64", model.elements, seed=s) for s in (0, 1)]
    calc = PyACECalculator(str(path))
    dE = dF = dS = 0.0
    for at in structures:
        at = at.copy()
        at.calc = calc
        ours = model.evaluate(at.numbers, at.positions, at.cell[:], at.pbc)
        dE = max(dE, abs(at.get_potential_energy() - ours.energy) / len(at))
        dF = max(dF, float(np.abs(at.get_forces() - ours.forces).max()))
        if at.pbc.all():                      # stress (ASE Voigt order) of periodic cells only
            sigma = -ours.virial / at.get_volume()
            voigt = sigma[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            dS = max(dS, float(np.abs(at.get_stress() - voigt).max()))
    return dict(structures=len(structures), max_energy_error_eV_per_atom=dE,
                max_force_error_eV_per_A=dF, max_stress_error_eV_per_A3=dS)


def save_yace(model, path, nradbase=None, lambdas=None) -> dict:
    """Write a loaded model as a .yace file (`aceserver convert IN OUT.yace`): a pacemaker potential
    as its content, unchanged; an ace1 model through `export_yace` (nradbase, lambdas: its options,
    None for the defaults). Returns a report: the format and source, or the export's metadata."""
    if isinstance(model, PACEPotential):
        write_yace(model.spec, path)
        return {"format": "yace", "source": "pacemaker potential (content unchanged)"}
    kw = {}
    if nradbase is not None:
        kw["nradbase"] = nradbase
    if lambdas:
        kw["lambdas"] = tuple(lambdas)
    return export_yace(model, path, **kw)
