"""Streaming least squares: the fit's system reduced block by block to triangular factors.

The weighted, prior-scaled system W·A·P⁻¹ c̃ ≈ W·y never has to exist in memory. Every row belongs to a
*row group* (here ``(config_type, kind)``, kind "E", "F" or "V"), and every weight set scales all rows
of one group by one common factor c_g (the weight-free part, 1/√N for E and V rows, is applied when the
rows are made). So each group's weight-free rows A_g, Y_g are reduced once, by tall-skinny QR —
stack each new block under the current R_g and re-factor — to

    R_g (r × m, upper triangular, r = min(rows, m)),  Q_gᵀY_g (r × K),  S_g (K × K),  rows_g

with S_g = Y_gᵀ(I − Q_gQ_gᵀ)Y_g the Gram matrix of the least-squares residuals, summed from the squares
of the parts of QᵀY that each re-factoring drops (no cancellation against ‖y‖², which with energy
targets of hundreds of eV would cost the evidence of BLR its last digits). Any weighted, prior-scaled
system over any selection of groups is recovered from them alone:

    [c_g·A_g·P⁻¹]_g  has the triangular factor of  [c_g·R_g·P⁻¹]_g  (stacked, re-factored),
    its Qᵀ(W·Y·α) is the re-factoring's Qᵀ applied to [c_g·Q_gᵀY_g·α]_g, and its squared
    least-squares residual is Σ_g c_g² αᵀS_gα plus what the re-factoring drops.

The K target columns make E0 a free choice too: column 0 holds y under the model's E0, column 1 + j the
count of element j on energy rows (0 elsewhere), so y under another E0' is Y·α with
α = (1, −(E0'_j − E0_j))_j (:func:`e0_alpha`).

QR/ridge, column-pivoted QR, BLR (evidence and committee from the SVD of R, ‖y‖² and the row count)
and the validation-selected truncated SVD (the validation set reduced the same way) then solve from
:class:`ReducedSystem` exactly as from the full system (:func:`solvers.solve` with ``reduced=``).
Peak memory: one R per group with at least m rows, plus ``chunk_rows`` buffered rows, plus one block.

API (also meant for selection and cross-validation — labels are arbitrary hashables, e.g.
``(fold, config_type, kind)``):

    gf = GroupFactors(n_basis, n_targets)          # or reduce_configs(model, configs)
    gf.add(label, A_rows, Y_rows)                  # weight-free rows of one group
    gf.merge(other)                                # combine two partial reductions (reduction trees)
    gf.factor(label)                               # → (R_g, Q_gᵀY_g, S_g, rows_g)
    red = gf.combine(labels, scales, col_scale=γ, alpha=α)   # → ReducedSystem(R, qty, resid, n_obs)
    sol = red.solve(solver_spec, validation=val_red, seed=0) # → solvers.Solution (c̃; θ = c̃/γ)
"""
from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from ase.data import chemical_symbols

from . import solvers
from .assembly import KIND_E, KIND_F, KIND_V, config_block, count_rows
from .data import Config, config_weights, normalise_weights

KINDS = {KIND_E: "E", KIND_F: "F", KIND_V: "V"}
UNIT_WEIGHTS = {"E": 1.0, "F": 1.0, "V": 1.0}


class GroupFactors:
    """Triangular factors (R_g, Q_gᵀY_g, S_g, rows_g) kept per row-group label; see the module doc.

    Rows added to a group are buffered and folded into its R once ``chunk_rows`` rows are waiting
    in all groups together (default n_basis, at least 256: the QR work per row is then twice that of
    one dense QR, and the buffer and its re-factoring copy take 3·n_basis² numbers).
    """

    def __init__(self, n_basis: int, n_targets: int = 1, chunk_rows: int | None = None):
        self.n_basis, self.n_targets = int(n_basis), int(n_targets)
        self.chunk_rows = int(chunk_rows or max(self.n_basis, 256))
        self._R: dict = {}
        self._QtY: dict = {}
        self._resid: dict = {}
        self._rows: dict = {}
        self._buf: dict = {}
        self._nbuf = 0

    # ---- building -----------------------------------------------------------------------------
    def _ensure(self, label):
        if label not in self._rows:
            m, k = self.n_basis, self.n_targets
            self._R[label] = np.zeros((0, m))
            self._QtY[label] = np.zeros((0, k))
            self._resid[label] = np.zeros((k, k))
            self._rows[label] = 0
            self._buf[label] = []

    def add(self, label, A: np.ndarray, Y: np.ndarray):
        """Add weight-free rows A (n × n_basis) with targets Y (n × n_targets, or (n,) for one)."""
        A = np.asarray(A, dtype=float)
        Y = np.asarray(Y, dtype=float).reshape(A.shape[0], -1)
        if A.ndim != 2 or A.shape[1] != self.n_basis or Y.shape[1] != self.n_targets:
            raise ValueError(f"rows of shape {A.shape} / targets {Y.shape} for {self.n_basis} basis "
                             f"functions and {self.n_targets} target columns")
        self._ensure(label)
        self._rows[label] += A.shape[0]
        self._push(label, A, Y)

    def _push(self, label, A, Y):
        if A.shape[0] == 0:
            return
        self._buf[label].append((A, Y))
        self._nbuf += A.shape[0]
        while self._nbuf > self.chunk_rows:
            self._flush(max(self._buf, key=lambda g: sum(a.shape[0] for a, _ in self._buf[g])))

    def _flush(self, label):
        parts = self._buf[label]
        if not parts:
            return
        self._buf[label] = []
        self._nbuf -= sum(a.shape[0] for a, _ in parts)
        parts.insert(0, (self._R[label], self._QtY[label]))
        self._R[label] = self._QtY[label] = None
        n = sum(a.shape[0] for a, _ in parts)
        A = np.empty((n, self.n_basis), order="F")      # one copy, in LAPACK's order: factored in place
        Y = np.empty((n, self.n_targets), order="F")
        i = 0
        while parts:
            a, y = parts.pop(0)
            A[i:i + a.shape[0]] = a
            Y[i:i + a.shape[0]] = y
            i += a.shape[0]
            del a, y
        self._R[label], self._QtY[label], S = solvers.qr_reduce(A, Y, overwrite_a=True)
        self._resid[label] += S

    def flush(self) -> "GroupFactors":
        for label in list(self._buf):
            self._flush(label)
        return self

    def merge(self, other: "GroupFactors") -> "GroupFactors":
        """Fold another reduction (over other rows of the same basis) into this one; returns self."""
        if (other.n_basis, other.n_targets) != (self.n_basis, self.n_targets):
            raise ValueError("merging factors of different shapes")
        other.flush()
        for label in other.labels:
            self._ensure(label)
            self._resid[label] += other._resid[label]
            self._rows[label] += other._rows[label]
            self._push(label, other._R[label], other._QtY[label])
        return self

    def copy(self) -> "GroupFactors":
        """An independent copy (flushed): adding to it leaves this one unchanged."""
        self.flush()
        gf = GroupFactors(self.n_basis, self.n_targets, self.chunk_rows)
        for g in self.labels:
            gf._ensure(g)
            gf._R[g], gf._QtY[g] = self._R[g].copy(), self._QtY[g].copy()
            gf._resid[g], gf._rows[g] = self._resid[g].copy(), self._rows[g]
        return gf

    # ---- reading --------------------------------------------------------------------------------
    @property
    def labels(self) -> list:
        return list(self._rows)

    def rows(self, label) -> int:
        return self._rows[label]

    @property
    def total_rows(self) -> int:
        return int(sum(self._rows.values()))

    def factor(self, label):
        """(R, QᵀY, S, rows) of one group."""
        self._flush(label)
        return self._R[label], self._QtY[label], self._resid[label], self._rows[label]

    def nbytes(self) -> int:
        return int(sum(self._R[g].nbytes + self._QtY[g].nbytes for g in self._rows))

    def combine(self, labels=None, scales=None, col_scale=None, alpha=None) -> "ReducedSystem":
        """The reduced system of the groups ``labels`` (default all) with rows scaled by ``scales``
        (one number per label, or a dict label → number; default 1), columns divided by ``col_scale``
        (e.g. the prior's γ) and targets Y·``alpha`` (default column 0). Groups with scale 0 still
        count their rows in ``n_obs``, as zero-weight rows do in the full system."""
        labels = self.labels if labels is None else list(labels)
        if isinstance(scales, dict):
            scales = [scales[g] for g in labels]
        scales = [1.0] * len(labels) if scales is None else [float(c) for c in scales]
        if len(scales) != len(labels):
            raise ValueError(f"{len(scales)} scales for {len(labels)} groups")
        inv = None if col_scale is None else 1.0 / np.asarray(col_scale, dtype=float)
        a = np.zeros(self.n_targets)
        if alpha is None:
            a[0] = 1.0
        else:
            a[:] = np.asarray(alpha, dtype=float)
        acc = GroupFactors(self.n_basis, 1, self.chunk_rows)
        acc._ensure(None)
        resid, n = 0.0, 0
        for g, c in zip(labels, scales):
            if g not in self._rows:
                raise KeyError(f"no rows in group {g!r}")
            R, QtY, S, rows = self.factor(g)
            n += rows
            resid += c * c * float(a @ S @ a)
            if c == 0.0 or R.shape[0] == 0:
                continue
            B = c * R if inv is None else (c * R) * inv[None, :]
            acc._push(None, B, c * (QtY @ a)[:, None])
        acc._rows[None] = n
        R, qty, S, _ = acc.factor(None)
        if n == 0:
            raise ValueError("no observations in the selected row groups")
        return ReducedSystem(R=R, qty=qty[:, 0].copy(), resid=resid + float(S[0, 0]), n_obs=n)

    # ---- transport (Dask) ----------------------------------------------------------------------
    def to_payload(self) -> dict:
        """Plain dict of lists and numpy arrays (labels must be tuples of str/int)."""
        self.flush()
        return {"n_basis": self.n_basis, "n_targets": self.n_targets, "chunk_rows": self.chunk_rows,
                "groups": [(list(g), self._R[g], self._QtY[g], self._resid[g], self._rows[g])
                           for g in self.labels]}

    @classmethod
    def from_payload(cls, p: dict) -> "GroupFactors":
        gf = cls(p["n_basis"], p["n_targets"], p["chunk_rows"])
        for g, R, QtY, S, rows in p["groups"]:
            g = tuple(g)
            gf._ensure(g)
            gf._R[g], gf._QtY[g], gf._resid[g], gf._rows[g] = np.asarray(R), np.asarray(QtY), np.asarray(S), int(rows)
        return gf


@dataclass
class ReducedSystem:
    """Triangular factor R (r × m) and Qᵀy (r,) of a system of ``n_obs`` rows whose least-squares
    residual is ``resid`` = min_c ‖Ac − y‖² (so ‖y‖² = ``yy`` = resid + ‖Qᵀy‖²)."""

    R: np.ndarray
    qty: np.ndarray
    resid: float
    n_obs: int

    @property
    def yy(self) -> float:
        return self.resid + float(self.qty @ self.qty)

    def solve(self, spec, validation: "ReducedSystem | None" = None, seed: int = 0) -> solvers.Solution:
        """Solve with any solver of :func:`solvers.solve`; ``validation`` (reduced the same way)
        chooses the truncated SVD's truncation."""
        Av = yv = None
        off = 0.0
        if validation is not None:
            Av, yv, off = validation.R, validation.qty, validation.resid
        return solvers.solve(spec, self.R, self.qty, Av, yv, seed=seed, overwrite_a=False,
                             reduced=(self.resid, self.n_obs), val_offset=off)


# ---------------------------------------------------------------------------------------------
# from configurations


def e0_alpha(elements: list[str], old: dict, new: dict) -> np.ndarray:
    """α with Y·α = the targets under E0 ``new`` for factors built under E0 ``old`` (eV)."""
    return np.concatenate([[1.0], [-(float(new[el]) - float(old[el])) for el in elements]])


def config_rows(model, cfg: Config, elements: list[str], E0: dict | None = None):
    """[(label, A, Y)] of one configuration: weight-free rows per (config_type, kind) with the
    targets of :class:`GroupFactors` (y, then element counts on energy rows)."""
    blk = config_block(model, cfg, UNIT_WEIGHTS, E0)    # unit weights: w is the weight-free scale
    A = blk.A * blk.w[:, None]
    Y = np.zeros((len(blk.y), 1 + len(elements)))
    Y[:, 0] = blk.y
    e = blk.kind == KIND_E
    if e.any():
        syms = [chemical_symbols[int(z)] for z in cfg.numbers]
        Y[e, 1:] = [syms.count(el) for el in elements]
    Y *= blk.w[:, None]
    out = []
    for code, name in KINDS.items():
        sel = blk.kind == code
        if sel.any():
            out.append(((cfg.config_type, name), A[sel], Y[sel]))
    return out


def _ordered_map(fn, items, threads: int, ahead: int = 2):
    """fn(item) for each item, yielded in order, at most ahead·threads computed ahead (bounded memory)."""
    if threads <= 1:
        for it in items:
            yield fn(it)
        return
    with ThreadPoolExecutor(max_workers=threads) as ex:
        window = deque()
        it = iter(items)
        try:
            for x in it:
                window.append(ex.submit(fn, x))
                if len(window) >= ahead * threads:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for f in window:
                f.cancel()


def leaves(configs: list[Config], n_basis: int, leaf_rows: int | None = None) -> list[list[int]]:
    """The configurations cut, in order, into runs of at least ``leaf_rows`` rows (default
    max(4·n_basis, 2048)): the leaves of the reduction tree. They depend on the data and the basis
    only, so every path (threads here, any number of Dask workers) reduces in the same tree and
    gives the same numbers."""
    per = int(leaf_rows or max(4 * int(n_basis), 2048))
    out, cur, rows = [], [], 0
    for i, c in enumerate(configs):
        cur.append(i)
        rows += count_rows(c)
        if rows >= per:
            out.append(cur)
            cur, rows = [], 0
    if cur:
        out.append(cur)
    return out


def tree_merge(parts):
    """Merge an iterable of GroupFactors (the leaves, in order) in the canonical binary tree: pairs
    (0,1), (2,3), … then pairs of those, an odd last one carried up — kept as a binary counter, so at
    most log₂(leaves) partial results are held at once."""
    stack = []                                  # (level, factors)
    for gf in parts:
        level = 0
        while stack and stack[-1][0] == level:
            gf = stack.pop()[1].merge(gf)
            level += 1
        stack.append((level, gf))
    if not stack:
        raise ValueError("no configurations to reduce")
    gf = stack.pop()[1]
    while stack:
        gf = stack.pop()[1].merge(gf)
    return gf


def reduce_leaf(model, configs: list[Config], chunk_rows: int | None = None, on_config=None,
                E0: dict | None = None) -> GroupFactors:
    """One leaf: the configurations' rows, in order, folded into per-(config_type, kind) factors
    (targets under ``E0``, eV; default the model's)."""
    elements = list(model.basis.elements)
    E0 = dict(model.E0 if E0 is None else E0)
    gf = GroupFactors(model.length_basis, 1 + len(elements), chunk_rows)
    for c in configs:
        for label, A, Y in config_rows(model, c, elements, E0):
            gf.add(label, A, Y)
        if on_config is not None:
            on_config()
    return gf.flush()


def reduce_configs(model, configs: list[Config], threads: int | None = None, progress: bool | None = None,
                   chunk_rows: int | None = None, leaf_rows: int | None = None, on_config=None,
                   E0: dict | None = None) -> GroupFactors:
    """Reduce the configurations' rows to per-(config_type, kind) factors (targets under ``E0``, eV;
    default the model's).

    The leaves (:func:`leaves`) are reduced on ``threads`` threads (default: all CPUs), each with
    single-threaded BLAS, and merged by :func:`tree_merge`: the numbers depend neither on the thread
    count nor on timing, and equal those of Dask workers (:mod:`.cluster`). At most ``threads`` leaves
    are in flight. ``on_config()`` is called after each configuration (progress).
    """
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm
    if progress is None:
        progress = len(configs) >= 20 and sys.stderr.isatty()
    threads = threads or os.cpu_count() or 1
    cut = leaves(configs, model.length_basis, leaf_rows)
    with tqdm(total=len(configs), desc="reducing", unit="config", disable=not progress) as bar, \
            threadpool_limits(limits=1, user_api="blas"):
        def tick():
            bar.update()
            if on_config is not None:
                on_config()

        parts = _ordered_map(lambda run: reduce_leaf(model, [configs[i] for i in run], chunk_rows, tick, E0), cut,
                             threads, ahead=1)
        return tree_merge(parts).flush()


def group_scales(labels, weights: dict | None) -> list[float]:
    """Row scale c_g of each (config_type, kind) group under ``weights``."""
    weights = normalise_weights(weights)
    return [float(config_weights(ct, weights)[kind]) for ct, kind in labels]


def reduced_system(gf: GroupFactors, weights: dict | None, gamma: np.ndarray) -> ReducedSystem:
    """The weighted, prior-scaled reduced system of all groups (targets under the model's E0)."""
    return gf.combine(gf.labels, group_scales(gf.labels, weights), col_scale=gamma)


# ---------------------------------------------------------------------------------------------
# memory


def group_rows(configs: list[Config]) -> dict:
    """Rows per (config_type, kind) group."""
    rows: dict = {}
    for c in configs:
        for k, n in (("E", int(c.energy is not None)), ("F", 3 * c.natoms * (c.forces is not None)),
                     ("V", 6 * (c.virial is not None))):
            if n:
                rows[(c.config_type, k)] = rows.get((c.config_type, k), 0) + n
    return rows


def memory_estimate(n_basis: int, rows_per_group, threads: int = 1, block_rows: int = 0,
                    chunk_rows: int | None = None, leaf_rows: int | None = None) -> int:
    """Bytes of the streaming path (:func:`reduce_configs`): per thread, one leaf in progress (each
    group's R, min(rows, m) × m, the row buffer, its re-factoring copy, one block); the partial
    results of the tree (log₂ leaves + 1 sets of R); the final combination and its SVD (4 m × m)."""
    m = int(n_basis)
    rows_per_group = [int(n) for n in rows_per_group]
    chunk = int(chunk_rows or max(m, 256))
    r = sum(min(n, m) for n in rows_per_group)
    n_leaves = max(1, -(-sum(rows_per_group) // int(leaf_rows or max(4 * m, 2048))))
    leaf = r + chunk + (chunk + m) + int(block_rows)
    tree = (math.ceil(math.log2(n_leaves)) + 1) * r
    return 8 * m * (min(max(threads, 1), n_leaves) * leaf + tree + 4 * m)


def _rss() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _maxrss() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak resident memory of this process inside a ``with`` block (bytes).

    The high-water mark of the kernel (ru_maxrss) is exact when it rises inside the block; otherwise
    the block's peak lies below an earlier one and RSS sampled every ``interval`` s is used.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.before = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.before = self.peak = _rss()
        self._max0 = _maxrss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())
        m1 = _maxrss()
        if m1 > self._max0:
            self.peak = max(self.peak, m1)
        return False

    def report(self) -> dict:
        gb = 2 ** 30
        return {"rss_before_gb": self.before / gb, "peak_rss_gb": self.peak / gb,
                "peak_increase_gb": (self.peak - self.before) / gb}


def time_per_row(model, configs: list[Config], sample: int = 4) -> float:
    """Seconds of one thread per design row, from timing a few configurations (after one warm-up)."""
    if not configs:
        return 0.0
    idx = np.linspace(0, len(configs) - 1, min(sample, len(configs)) + 1).round().astype(int)
    config_block(model, configs[idx[0]], UNIT_WEIGHTS)          # warm-up (numba cache, neighbour code)
    t0 = time.perf_counter()
    rows = 0
    for i in sorted(set(idx[1:].tolist()) or {idx[0]}):
        rows += len(config_block(model, configs[i], UNIT_WEIGHTS).y)
    return (time.perf_counter() - t0) / max(rows, 1)


def human_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2**20:.1f} MiB"


__all__ = ["GroupFactors", "ReducedSystem", "reduce_configs", "reduced_system", "group_scales", "e0_alpha",
           "memory_estimate", "group_rows", "PeakMemory", "time_per_row"]
