"""Per-atom uncertainty and descriptors of packed structures (`evaluate_many(gamma=...,
energies_committee=..., descriptors=...)`): the extrapolation grade γ (dimensionless), every
committee member's site energies (K, N) eV and the descriptor rows, as `evaluate` and
`descriptors` give them structure by structure.

The packed neighbour list is a valid neighbour list of the concatenated atoms (no pair joins two
structures), so the descriptor rows are made for a whole chunk of packed structures, BLOCK_ATOMS
atoms (whole structures) at a time: with ace1 tables that allow it the site pass writes them from
its own A and AA (`batch_pass.pass_range_rows`), else a rows pass of their own on the same list
(`potential._descriptor_rows`, what `evaluate` does then). Each block's products go through
`SiteUncertainty` (one BLAS product per species, on one BLAS thread when called from the main
thread: `uncertainty.one_blas_thread`), so the memory beside the outputs is O(BLOCK_ATOMS · L + L²).
With threads, each thread's run of structures makes and uses its own blocks.

Exactness: the rows, and so `descriptors`, are `evaluate`'s bit for bit (the same kernels on the
same pairs). γ = max_k |(b A⁻¹)_k| and the committee site energies E0 + W_k·b are BLAS products
whose summation order may depend on how many rows one product has (gemv for one atom, blocked
gemm for many), so they agree with `evaluate` to the rounding of an L-term dot product:
|Δγ| ≤ 2·γ_L·max_k (|b|·|A⁻¹|)_k, γ_L = L·u/(1 - L·u), u = 2⁻⁵³ (tests/test_many_uncertainty.py).
"""
from __future__ import annotations

import numpy as np

from ..kernels.batch_pass import pass_range, pass_range_rows
from . import uncertainty

BLOCK_ATOMS = 1024    # rows made and used this many atoms at a time (as evaluate's CANCEL_BLOCK_ATOMS)


class PackedUncertainty:
    """What one `evaluate_many` call asked for beyond the energies, checked before any work:
    `NoActiveSetError` for γ from a model without an active set (the error `evaluate` raises)."""

    def __init__(self, potential, gamma: bool, energies_committee: bool, descriptors: bool):
        self.potential = potential
        self.descriptors = descriptors
        # the collector of an empty structure: evaluate's checks and its inverses, weights and E0
        self.proto = (potential._uncertainty(np.zeros(0, dtype=np.int64), gamma, energies_committee)
                      if gamma or energies_committee else None)
        p = self.proto
        self.missing = ([s for s, a in enumerate(p.inverses) if a is None]
                        if p is not None and p.inverses is not None else [])
        if p is not None and p.inverses is not None and self.missing:
            # species without an active-set entry: their structures go to `evaluate` for its error;
            # zeros stand in for their atoms that the packed arrays hold anyway (not handed out)
            self.inverses = [np.zeros((L, L)) if a is None else a for a, L in zip(p.inverses, p.sizes)]
        else:
            self.inverses = None if p is None else p.inverses
        self.width = max(potential.descriptor_sizes.values())

    def refused(self, z: np.ndarray) -> np.ndarray | None:
        """Atoms (mask) of species that γ is asked for but the active set lacks; None if none."""
        if not self.missing:
            return None
        mask = np.isin(z, self.missing)
        return mask if mask.any() else None

    def run(self, run, batch, first, nbr, R, out, parts, on_threads) -> tuple:
        """The site pass of `run`'s chunk `batch` into `out` (from `batch_pass.outputs`), the
        parts (runs of structures) at once through on_threads(fn, parts), with the per-atom extras: (γ (N,) or None, committee site energies (K, N)
        or None, rows (N, width) or None) over the chunk's packed atoms."""
        potential, tables, forces = self.potential, run.tables, run.forces
        offsets, z = batch.offsets, batch.z
        N = len(z)
        p = self.proto
        collect = None if p is None else uncertainty.SiteUncertainty(
            z, p.sizes, self.inverses, p.weights, p.e0, threaded=False)
        keep = np.empty((N, self.width)) if self.descriptors else None
        DT = potential._descriptor_tables(tables)
        fused = DT is not None
        columns = DT.c_ptr.shape[0] - 1 + DT.pair_bspl.shape[2] * tables.e0.shape[0] if fused else 0

        def part(bounds):
            lo, hi = bounds
            if not fused:
                pass_range(lo, hi, offsets, first, nbr, R, z, tables, forces, out)
            D = np.empty((0, columns))
            s = lo
            while s < hi:
                e = int(np.searchsorted(offsets, offsets[s] + BLOCK_ATOMS, side="right")) - 1
                e = min(hi, max(e, s + 1))
                a0, a1 = int(offsets[s]), int(offsets[e])
                if fused:
                    if len(D) < a1 - a0:
                        D = np.empty((max(a1 - a0, min(BLOCK_ATOMS, int(offsets[hi]) - a0)), columns))
                    pass_range_rows(s, e, offsets, first, nbr, R, z, tables, forces, out, D, DT)
                    rows = D[:a1 - a0]
                else:
                    rows = potential._descriptor_rows(z, first, nbr, R, np.arange(a0, a1, dtype=np.int64), 1)
                if collect is not None:
                    collect.add(a0, a1, rows)
                if keep is not None:
                    keep[a0:a1] = rows[:, :self.width]
                s = e

        # one BLAS thread for the whole chunk when called from the main thread (each block's product
        # is small); the part threads' own limits (SiteUncertainty's, per block) change nothing
        with uncertainty.one_blas_thread():
            on_threads(part, parts)
        if collect is None:
            return None, None, keep
        return collect.gamma, collect.energies, keep

    @staticmethod
    def attach(results, batch, status, extras) -> None:
        """Each structure's slices of the chunk's extras, on its `Evaluation` (as `evaluate` sets
        gamma and energies_committee; descriptors as `SitePotential.descriptors` gives them)."""
        gamma, energies, rows = extras
        offsets = batch.offsets.tolist()
        index = batch.index
        for s in np.flatnonzero(status == 0).tolist():
            a, b = offsets[s], offsets[s + 1]
            ev = results[index[s]]
            if gamma is not None:
                ev.gamma = gamma[a:b]
            if energies is not None:
                ev.energies_committee = energies[:, a:b]
            if rows is not None:
                ev.descriptors = rows[a:b]
