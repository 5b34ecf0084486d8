"""Radial functions of pacemaker potentials, exact and vectorised (construction time, numpy), and
their cubic Hermite tables for the kernels.

Per bond (centre species i, neighbour species j): the radial basis g_k(r) (ChebExpCos, ChebPow,
ChebLinear, SBessel), the radial functions R_nl = Σ_k c_nlk g_k, and the core repulsion φ_core
(exponential, or ZBL with its switch to zero at r_c). Formulas: ../docs/pacemaker.md and the
pacemaker papers; every function returns values and exact r-derivatives.
"""
from __future__ import annotations

import numpy as np
from ase.data import atomic_numbers

ZBL_KE = 14.399645351950543          # e²/(4πε0) in eV·Å
ZBL_C = np.array([0.18175, 0.50986, 0.28022, 0.02817])
ZBL_D = np.array([3.19980, 0.94229, 0.40290, 0.20162])


def smooth_step(r, r_in, delta):
    """1 for r <= r_in - Δ, 0 for r >= r_in, a quintic polynomial in between; value and d/dr."""
    r = np.asarray(r, dtype=float)
    f = np.where(r <= r_in - delta, 1.0, 0.0)
    df = np.zeros_like(r)
    mid = (r > r_in - delta) & (r < r_in)
    if delta > 0 and mid.any():
        x = 1.0 - 2.0 * (1.0 + (r[mid] - r_in) / delta)
        f[mid] = 0.5 + 3.75 * (x / 4 - x ** 3 / 6 + x ** 5 / 20)
        df[mid] = 3.75 * (0.25 - x ** 2 / 2 + x ** 4 / 4) * (-2.0 / delta)
    return f, df


def _chebyshev(x, dx, kmax):
    """T_0..T_kmax at x and their r-derivatives (dx = dx/dr)."""
    T = np.empty((kmax + 1,) + x.shape)
    dT = np.empty_like(T)
    T[0], dT[0] = 1.0, 0.0
    if kmax >= 1:
        T[1], dT[1] = x, 1.0
    for k in range(2, kmax + 1):
        T[k] = 2 * x * T[k - 1] - T[k - 2]
        dT[k] = 2 * T[k - 1] + 2 * x * dT[k - 1] - dT[k - 2]
    return T, dT * dx


def _cheb_shifted(x, dx, K):
    """g_{k-1} = (1 - T_k(x))/2 for k = 1..K."""
    T, dT = _chebyshev(x, dx, K)
    return (1.0 - T[1:]) / 2, -dT[1:] / 2


def _sinc(z):
    """sin z / z and its derivative."""
    small = np.abs(z) < 1e-8
    zs = np.where(small, 1.0, z)
    s = np.where(small, 1.0 - z * z / 6, np.sin(zs) / zs)
    ds = np.where(small, -z / 3, (zs * np.cos(zs) - np.sin(zs)) / (zs * zs))
    return s, ds


def basis_functions(name, r, K, lam, rc, dcut):
    """g_k(r), k < K, of the named radial basis and their r-derivatives, shapes (K, len(r))."""
    r = np.asarray(r, dtype=float)
    if name == "ChebExpCos":
        el = np.exp(-lam)
        e = np.exp(-lam * r / rc)
        x = 1.0 - 2.0 * (e - el) / (1.0 - el)
        dx = 2.0 * lam / rc * e / (1.0 - el)
        T, dT = _chebyshev(x, dx, K - 1)
        g, dg = (1.0 - T) / 2, -dT / 2
        g[0], dg[0] = 1.0, 0.0
        env = 0.5 * (1 + np.cos(np.pi * r / rc))
        denv = -0.5 * np.pi / rc * np.sin(np.pi * r / rc)
        tail = r > rc - dcut
        u = (r - rc + dcut) / dcut
        env2 = np.where(tail, 0.5 * (1 + np.cos(np.pi * u)), 1.0)
        denv2 = np.where(tail, -0.5 * np.pi / dcut * np.sin(np.pi * u), 0.0)
        fc, dfc = env * env2, denv * env2 + env * denv2
        return g * fc, dg * fc + g * dfc
    if name == "ChebPow":
        base = np.clip(1.0 - r / rc, 0.0, None)
        y = base ** lam
        with np.errstate(divide="ignore", invalid="ignore"):
            dy = np.where(base > 0, -lam * base ** (lam - 1) / rc, 0.0 if lam > 1 else -1.0 / rc)
        return _cheb_shifted(1.0 - 2.0 * y, -2.0 * dy, K)
    if name == "ChebLinear":
        return _cheb_shifted(1.0 - r / rc, -np.ones_like(r) / rc, K)
    if name == "SBessel":
        g = np.empty((K,) + r.shape)
        dg = np.empty_like(g)
        d_prev = 1.0
        for n in range(K):
            a, b = (n + 1) * np.pi / rc, (n + 2) * np.pi / rc
            sa, dsa = _sinc(a * r)
            sb, dsb = _sinc(b * r)
            pref = (-1) ** n * np.sqrt(2) * np.pi / rc ** 1.5 * (n + 1) * (n + 2) / np.sqrt(
                (n + 1) ** 2 + (n + 2) ** 2)
            f, df = pref * (sa + sb), pref * (a * dsa + b * dsb)
            if n == 0:
                g[0], dg[0] = f, df
            else:
                e = n * n * (n + 2) ** 2 / (4.0 * (n + 1) ** 4 + 1.0)
                d = 1.0 - e / d_prev
                c = np.sqrt(e / d_prev)
                g[n] = (f + c * g[n - 1]) / np.sqrt(d)
                dg[n] = (df + c * dg[n - 1]) / np.sqrt(d)
                d_prev = d
        return g, dg
    raise ValueError(f"unknown radial basis {name!r}")


def _zbl_e(r, a):
    """E(r) = φ(r/a)/r of the universal ZBL screening, with its first two r-derivatives."""
    ex = np.exp(-np.multiply.outer(r / a, ZBL_D))            # (..., 4)
    phi = ex @ ZBL_C
    dphi = -(ex * ZBL_D) @ ZBL_C / a
    d2phi = (ex * ZBL_D ** 2) @ ZBL_C / a ** 2
    E = phi / r
    dE = dphi / r - phi / r ** 2
    d2E = d2phi / r - 2 * dphi / r ** 2 + 2 * phi / r ** 3
    return E, dE, d2E


def core_repulsion(bond, inner_type, zi, zj, r):
    """φ_core(r) of a bond and its r-derivative (before the outer cut-off at rcut)."""
    r = np.asarray(r, dtype=float)
    rc = bond.rcut
    if inner_type == "zbl":
        a = 0.46850 / (zi ** 0.23 + zj ** 0.23)
        E, dE, _ = _zbl_e(r, a)
        E_c, dE_c, d2E_c = (float(v[0]) for v in _zbl_e(np.array([rc]), a))
        D = bond.dcut
        A = (-3 * dE_c + D * d2E_c) / D ** 2
        B = (2 * dE_c - D * d2E_c) / D ** 3
        C = -E_c + D * dE_c / 2 - D ** 2 * d2E_c / 12
        t = np.clip(r - rc + D, 0.0, None)
        S = np.where(r > rc - D, A / 3 * t ** 3 + B / 4 * t ** 4 + C, C)
        dS = np.where(r > rc - D, A * t ** 2 + B * t ** 3, 0.0)
        pref = bond.prehc * ZBL_KE / 2 * zi * zj
        sw, dsw = smooth_step(r, rc, D)
        return pref * (E + S) * sw, pref * ((dE + dS) * sw + (E + S) * dsw)
    pre, lam = abs(bond.prehc), abs(bond.lambdahc)
    live = lam * r * r < 50.0
    ex = np.where(live, np.exp(-lam * r * r), 0.0)
    env = 0.5 * (1 + np.cos(np.pi * r / rc))
    denv = -0.5 * np.pi / rc * np.sin(np.pi * r / rc)
    phi = pre * ex / r
    dphi = pre * ex * (-2 * lam - 1 / (r * r))
    val, der = phi * env, dphi * env + phi * denv
    if inner_type == "distance":
        f, df = smooth_step(r, bond.rcut_in, bond.dcut_in)
        val, der = val * f, der * f + val * df
    return val, der


def bond_functions(bond, inner_type, zi, zj, r, N, L, K):
    """All tabulated functions of one bond at r, in the kernels' order: R_nl (n < N, l <= L; index
    n(L+1)+l), then g_k (k < K), then φ_core. Zero where the bond has fewer. (values, d/dr), each
    (N(L+1)+K+1, len(r))."""
    r = np.asarray(r, dtype=float)
    nf = N * (L + 1) + K + 1
    out = np.zeros((nf,) + r.shape)
    dout = np.zeros_like(out)
    g, dg = basis_functions(bond.radbase, r, bond.nradbase, bond.lam, bond.rcut, bond.dcut)
    r_in, d_in = bond.rcut_in, bond.dcut_in
    if inner_type == "distance":
        f, df = smooth_step(r, r_in, d_in)
        g, dg = g * (1 - f), dg * (1 - f) - g * df
    elif inner_type == "density" and r_in - d_in > 0:
        inside = r <= r_in - d_in
        g, dg = np.where(inside, 0.0, g), np.where(inside, 0.0, dg)
    Nb, Lb, Kb = bond.nradmax, bond.lmax, bond.nradbase
    if Nb:
        R = np.einsum("nlk,kr->nlr", bond.crad, g)
        dR = np.einsum("nlk,kr->nlr", bond.crad, dg)
        idx = (np.arange(Nb)[:, None] * (L + 1) + np.arange(Lb + 1)[None, :]).reshape(-1)
        out[idx] = R.reshape(Nb * (Lb + 1), -1)
        dout[idx] = dR.reshape(Nb * (Lb + 1), -1)
    out[N * (L + 1): N * (L + 1) + Kb] = g
    dout[N * (L + 1): N * (L + 1) + Kb] = dg
    out[-1], dout[-1] = core_repulsion(bond, inner_type, zi, zj, r)
    return out, dout


def hermite_tables(spec):
    """Value and derivative of every bond function at the nodes r_n = n·h, h = r_c/int(r_c/δ)
    (δ = deltaSplineBins), for cubic Hermite interpolation in the kernels.

    Returns tab (nz, nz, n_nodes, 2, nf) [value, d/dr], h (nz, nz), rcut (nz, nz), and the
    global (N, L, K). Node 0 (r = 0, where φ_core is singular) copies node 1; the evaluator
    refuses pairs closer than h."""
    nz = len(spec.elements)
    bonds = spec.bonds
    N = max(b.nradmax for b in bonds.values())
    L = max(b.lmax for b in bonds.values())
    K = max(b.nradbase for b in bonds.values())
    nlut = {k: max(1, int(b.rcut / spec.delta_spline_bins)) for k, b in bonds.items()}
    n_nodes = max(nlut.values()) + 1
    nf = N * (L + 1) + K + 1
    tab = np.zeros((nz, nz, n_nodes, 2, nf))
    h = np.ones((nz, nz))
    rcut = np.zeros((nz, nz))
    for (i, j), b in bonds.items():
        n = nlut[(i, j)]
        h[i, j] = b.rcut / n
        rcut[i, j] = b.rcut
        r = np.arange(1, n + 1) * h[i, j]
        zi, zj = atomic_numbers[spec.elements[i]], atomic_numbers[spec.elements[j]]
        val, der = bond_functions(b, spec.inner_cutoff_type, zi, zj, r, N, L, K)
        tab[i, j, 1: n + 1, 0] = val.T
        tab[i, j, 1: n + 1, 1] = der.T
        tab[i, j, 0] = tab[i, j, 1]
    return tab, h, rcut, (N, L, K)
