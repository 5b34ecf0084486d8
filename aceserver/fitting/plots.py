"""Parity plots (PNG, matplotlib Agg): predicted vs reference energies (eV/atom) and forces (eV/Å).

Energies are shown per atom relative to the one-body reference, (E − Σ E0)/N, when E0 is given, so
that multi-species data are not spread out by composition alone.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from .data import Config


def _collect(configs: list[Config], predictions, E0=None):
    e_ref, e_pred, f_ref, f_pred = [], [], [], []
    for c, (E, F, _) in zip(configs, predictions):
        if c.energy is not None:
            ref = sum(E0[chemical_symbols[int(z)]] for z in c.numbers) if E0 else 0.0
            e_ref.append((c.energy - ref) / c.natoms)
            e_pred.append((E - ref) / c.natoms)
        if c.forces is not None:
            f_ref.append(c.forces.ravel())
            f_pred.append(np.asarray(F).ravel())
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)
    return np.array(e_ref), np.array(e_pred), cat(f_ref), cat(f_pred)


def parity_plots(outdir, sets: dict[str, tuple[list[Config], list]], title: str = "",
                 E0: dict[str, float] | None = None) -> list[Path]:
    """Write ``parity_energy.png`` and ``parity_forces.png``; ``sets`` maps a label (e.g. "train",
    "validation") to (configs, predictions) with predictions as from :func:`error_tables.predict`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    data = {k: _collect(*v, E0=E0) for k, v in sets.items()}
    written = []
    ename = "energy − ΣE0" if E0 else "energy"
    for what, iref, ipred, unit, fname in ((ename, 0, 1, "eV/atom", "parity_energy.png"),
                                           ("force components", 2, 3, "eV/Å", "parity_forces.png")):
        fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
        lo, hi = np.inf, -np.inf
        for label, d in data.items():
            ref, pred = d[iref], d[ipred]
            if ref.size == 0:
                continue
            rmse = float(np.sqrt(np.mean((pred - ref) ** 2)))
            shown = f"{rmse * 1e3:.3g} meV/atom" if iref == 0 else f"{rmse:.3g} eV/Å"
            ax.scatter(ref, pred, s=6, alpha=0.6, label=f"{label} (RMSE {shown})")
            lo, hi = min(lo, ref.min(), pred.min()), max(hi, ref.max(), pred.max())
        if np.isfinite(lo):
            pad = 0.02 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k-", lw=0.8)
        ax.set_xlabel(f"reference {what} ({unit})")
        ax.set_ylabel(f"predicted {what} ({unit})")
        ax.set_title(f"{title} {what}".strip())
        ax.tick_params(axis="x", labelrotation=30)
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        path = outdir / fname
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written
