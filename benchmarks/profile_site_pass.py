"""Where the site pass spends its time: cumulative stages of `aceserver.kernels.ace._fast_range`
timed one after another in the same process (process CPU time, min over rounds), µs/atom.

    PYTHONPATH=. python benchmarks/profile_site_pass.py [MODEL] [--atoms fcc108|diamond64] [--rounds 5]

MODEL: a .yace file or an aceserver model file (default tests/data/Cu-PBE-core-rep.yace).
Stages (each includes the ones before it):
    features   neighbour vectors, harmonics with gradients, radials (tables or splines)
    A          + the atomic base A (and for tables the radials spread over lm)
    forward    + the product DAG, leaves and densities (embedding for tables)
    reverse    + the reverse DAG pass to ∂E/∂A
    full       the production pass (with the pullback to pair gradients)
plus the neighbour list and the force/virial scatter, and the whole `evaluate`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aceserver.kernels import atomic_base as AB  # noqa: E402
from aceserver.kernels import scatter as SC  # noqa: E402
from aceserver.kernels import site_pass as K                                   # noqa: E402
from aceserver.kernels.pace_features import embed, table_features  # noqa: E402


@njit(cache=True, nogil=True)
def staged(first, nbr, R, zat, T, stage):
    """The site pass of K._fast_range cut after `stage` (0 features, 1 A, 2 forward, 3 reverse);
    returns a checksum so nothing is optimised away."""
    mode = T.mode
    N = first.shape[0] - 1
    nlm = (T.lmax + 1) ** 2
    nz = T.e0.shape[0]
    nN = T.parent.shape[0]
    M = T.coef.shape[0]
    n_rad, ls = K.radial_layout(T, mode)
    row_off, row_lmax = T.row_off, T.row_lmax
    scratch = AB.site_scratch(first, 0, N, n_rad, T.lmax, nz)
    Kn, Q, C, S, zb, slot, zj, rhat, rr, rinv, rad, drad, Y, dY = scratch
    row = np.empty((2, n_rad))
    A = np.empty((nz, row_off.shape[0], nlm))
    dA = np.empty((nz, row_off.shape[0], nlm))
    Af = A.reshape(-1)
    dAf = dA.reshape(-1)
    AA = np.ones(nN + 1)
    dAA = np.empty(nN + 1)
    seed = np.zeros(M)
    rho = np.empty(M)
    chk = 0.0
    for i in range(N):
        zi = zat[i]
        lo, hi = T.node_lo[zi], T.node_hi[zi]
        J = AB.sort_neighbours(i, first, nbr, zat, zb, slot)
        jstar = -1
        if mode == 0:
            AB.site_features(i, J, slot, R, zat, nbr, T.mb_t, T.mb_spl, T.lmax, Kn, Q, C, S,
                            zj, rhat, rr, rinv, rad, drad, Y, dY)
        else:
            jstar = table_features(i, J, slot, R, zat, nbr, T, Kn, Q, C, S, zj, rhat, rinv, rad,
                                   drad, Y, dY, row)
        chk += rad[0, 0] + dY[2, nlm - 1, J - 1]
        if stage < 1:
            continue
        AB.accumulate_a(zb, rad, Y, A, row_off, row_lmax, ls)
        chk += Af[-1]
        if stage < 2:
            continue
        AB.forward_aa(Af, T.parent, T.node_a, AA, lo, hi)
        llo, lhi = T.leaf_lo[zi], T.leaf_hi[zi]
        for mm in range(M):
            rho[mm] = AB.dot_range(T.coef[mm, zi], AA, lo, hi)
        if lhi > llo:
            K.leaf_densities(Af, AA, T.leaf_parent, T.leaf_a, T.leaf_coef, zi, rho, llo, lhi)
        if mode == 0:
            seed[0] = 1.0
            chk += rho[0]
        else:
            e, _, _ = embed(zi, J, rho, rad, zj, T, seed, jstar, slot, R)
            chk += e
        if stage < 3:
            continue
        dA[:] = 0.0
        K.seed_weights(seed, T.coef, zi, dAA, lo, hi)
        if lhi > llo:
            K.reverse_leaves(Af, AA, T.leaf_parent, T.leaf_a, T.leaf_coef, zi, seed, dAf, dAA,
                             llo, lhi)
        AB.reverse_aa(Af, AA, T.parent, T.node_a, dAf, dAA, lo, hi)
        chk += dAf[0]
    return chk


def load(path):
    from aceserver.loading import load_model
    return load_model(path)


def structure(name, rattle=0.05):
    from ase.build import bulk
    if name == "fcc108":
        atoms = bulk("Cu", "fcc", a=3.615, cubic=True) * (3, 3, 3)
    elif name == "diamond64":
        atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    else:
        raise SystemExit(f"unknown structure {name}")
    atoms.rattle(rattle, seed=1)
    return atoms


def cpu_min(fn, calls, rounds):
    best = np.inf
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - t) / calls)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=str(ROOT / "tests/data/Cu-PBE-core-rep.yace"))
    ap.add_argument("--atoms", default=None)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=10)
    args = ap.parse_args()
    pot = load(args.model)
    atoms = structure(args.atoms or ("fcc108" if pot.elements == ["Cu"] else "diamond64"))
    if set(atoms.get_chemical_symbols()) - set(pot.elements):
        atoms.set_chemical_symbols([pot.elements[0]] * len(atoms))
    n = len(atoms)
    T = pot._tables(False)
    z, first, nbr, R = pot._neighbours(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    print(f"{Path(args.model).name}: {n} atoms, {len(R) / n:.0f} neighbours/atom, "
          f"{T.parent.shape[0]} product nodes, {T.leaf_a.shape[0]} leaves")
    for s in range(4):
        staged(first, nbr, R, z, T, s)
    K.fast_serial(first, nbr, R, z, T, True)
    rows = []
    prev = 0.0
    for s, name in enumerate(("features", "A", "forward", "reverse")):
        t = cpu_min(lambda: staged(first, nbr, R, z, T, s), args.calls, args.rounds) / n * 1e6
        rows.append((name, t, t - prev))
        prev = t
    t = cpu_min(lambda: K.fast_serial(first, nbr, R, z, T, True), args.calls, args.rounds) / n * 1e6
    rows.append(("full (pullback)", t, t - prev))
    tn = cpu_min(lambda: pot._neighbours(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc),
                 args.calls, args.rounds) / n * 1e6
    E, G, _ = K.fast_serial(first, nbr, R, z, T, True)
    ts = cpu_min(lambda: SC.scatter_forces_virial(first, nbr, R, G, n), args.calls, args.rounds) / n * 1e6
    te = cpu_min(lambda: pot.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc,
                                      threads=1), args.calls, args.rounds) / n * 1e6
    print(f"{'stage':<18}{'cumulative':>12}{'this stage':>12}   (µs/atom, CPU time, min of {args.rounds})")
    for name, cum, inc in rows:
        print(f"{name:<18}{cum:12.1f}{inc:12.1f}")
    print(f"{'neighbour list':<18}{'':12}{tn:12.1f}")
    print(f"{'scatter F, W':<18}{'':12}{ts:12.1f}")
    print(f"{'evaluate()':<18}{te:12.1f}")


if __name__ == "__main__":
    main()
