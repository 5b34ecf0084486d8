"""Weighted least-squares system from the evaluator's basis mode (ace-spec §4.1).

Per configuration with N atoms, rows in upstream's order:

    1 energy row      E_k = θ-derivative of the total energy    target E − Σ_i E0(Z_i)   weight w_E/√N
    3N force rows     atom-major (F1x, F1y, F1z, F2x, ...)        target F                 weight w_F
    6 virial rows     Voigt xx, yy, zz, yz, xz, xy               target W (eV)            weight w_V/√N

An observation missing from a configuration contributes no rows. Each configuration's rows are an
independent :class:`Block` computed by :func:`config_block` from ``model.basis_rows`` only (no second
implementation of the basis), so blocks can be computed anywhere — threads here (the numba kernels
release the GIL), or any executor with ``submit`` such as a Dask ``Client.get_executor()`` — and are
then copied into their row range of the design matrix.
"""
from __future__ import annotations

import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
from ase.data import chemical_symbols

from aceserver.evaluation.many import neighbour_lists
from aceserver.evaluation.postprocess import VOIGT
from aceserver.evaluation.site_potential import SitePotential

from .data import Config, config_weights, normalise_weights

KIND_E, KIND_F, KIND_V = 0, 1, 2


class AssemblyMemoryError(MemoryError):
    """The design matrix would not fit in memory. ``needed`` and ``available`` are in bytes."""

    def __init__(self, message, needed: int, available: int):
        super().__init__(message)
        self.needed = needed
        self.available = available


@dataclass
class Block:
    """The rows of one configuration: design A (n, L), targets y (n,), weights w (n,), kinds (n,)."""

    A: np.ndarray
    y: np.ndarray
    w: np.ndarray
    kind: np.ndarray


@dataclass
class LsqSystem:
    """Unweighted design matrix A, targets y, weights w; ``config``/``kind`` say where each row came from."""

    A: np.ndarray
    y: np.ndarray
    w: np.ndarray
    config: np.ndarray     # (n,) index of the configuration in the list given to assemble()
    kind: np.ndarray       # (n,) KIND_E / KIND_F / KIND_V
    seconds: float = 0.0

    @property
    def shape(self):
        return self.A.shape


def count_rows(cfg: Config) -> int:
    return (cfg.energy is not None) + (3 * cfg.natoms if cfg.forces is not None else 0) + \
        (6 if cfg.virial is not None else 0)


def _e0_sum(cfg: Config, E0: dict[str, float]) -> float:
    return float(sum(E0[chemical_symbols[int(z)]] for z in cfg.numbers))


def config_block(model, cfg: Config, w: dict[str, float], E0: dict[str, float] | None = None,
                 neighbours=None) -> Block:
    """Design rows, targets and weights of one configuration (E0 from ``model.E0`` unless given;
    ``neighbours``: its neighbour list from `evaluation.many.neighbour_lists`, else searched)."""
    E0 = model.E0 if E0 is None else E0
    n = cfg.natoms
    extra = {} if neighbours is None else {"neighbours": neighbours}
    e, f, v = model.basis_rows(cfg.numbers, cfg.positions, cfg.cell, cfg.pbc, **extra)
    L = e.shape[0]
    rows, ys, ws, kinds = [], [], [], []
    sq = math.sqrt(n)
    if cfg.energy is not None:
        rows.append(np.asarray(e, dtype=float).reshape(1, L))
        ys.append([cfg.energy - _e0_sum(cfg, E0)])
        ws.append([w["E"] / sq])
        kinds.append(np.full(1, KIND_E, np.int8))
    if cfg.forces is not None:
        rows.append(np.asarray(f, dtype=float).reshape(3 * n, L))
        ys.append(cfg.forces.reshape(-1))
        ws.append(np.full(3 * n, w["F"]))
        kinds.append(np.full(3 * n, KIND_F, np.int8))
    if cfg.virial is not None:
        v = np.asarray(v, dtype=float)
        rows.append(np.stack([v[a, b] for a, b in VOIGT]))
        ys.append([cfg.virial[a, b] for a, b in VOIGT])
        ws.append(np.full(6, w["V"] / sq))
        kinds.append(np.full(6, KIND_V, np.int8))
    if not rows:
        return Block(np.zeros((0, L)), np.zeros(0), np.zeros(0), np.zeros(0, np.int8))
    return Block(np.vstack(rows), np.concatenate([np.asarray(y, float) for y in ys]),
                 np.concatenate([np.asarray(x, float) for x in ws]), np.concatenate(kinds))


def available_memory() -> int:
    """Bytes of memory available now (MemAvailable, or physical memory where /proc is missing)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def memory_estimate(n_rows: int, n_basis: int, copies: float = 2.0) -> int:
    """Bytes for the float64 design matrix times ``copies`` (the solver needs about one more)."""
    return int(n_rows) * int(n_basis) * 8 * copies


def check_memory(n_rows: int, n_basis: int, limit: int | None = None, copies: float = 2.0):
    need = memory_estimate(n_rows, n_basis, copies)
    avail = available_memory() if limit is None else int(limit)
    if need > avail:
        raise AssemblyMemoryError(
            f"the design matrix ({n_rows} rows x {n_basis} basis functions, float64) needs "
            f"{n_rows * n_basis * 8 / 2**30:.2f} GiB, about {need / 2**30:.2f} GiB with the solver's workspace, "
            f"but only {avail / 2**30:.2f} GiB are available; use fewer configurations or a smaller basis",
            need, avail)
    return need


def assemble(model, configs: list[Config], weights: dict | None = None, threads: int | None = None,
             progress: bool | None = None, executor=None, memory_limit: int | None = None) -> LsqSystem:
    """Assemble the unweighted system (A, y) and the weights w over all configurations.

    ``threads``: worker threads (default: CPU count). ``executor``: any object with ``submit(fn, *args)``
    returning futures (e.g. Dask's ``client.get_executor()``), used instead of threads.
    ``progress``: show a tqdm bar (default: on a terminal with ≥ 20 configurations).
    ``memory_limit``: bytes allowed for the design matrix and the solver's copy (default: MemAvailable).
    """
    t0 = time.perf_counter()
    weights = normalise_weights(weights)
    L = int(model.length_basis)
    nrows = np.array([count_rows(c) for c in configs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(nrows)])
    total = int(offsets[-1])
    check_memory(total, L, memory_limit)
    A = np.empty((total, L), order="F")     # LAPACK order: the solver can factorise in place
    y = np.empty(total)
    w = np.empty(total)
    cfg_idx = np.repeat(np.arange(len(configs), dtype=np.int32), nrows)
    kind = np.empty(total, np.int8)
    E0 = dict(model.E0)

    def put(i, blk: Block):
        a, b = offsets[i], offsets[i + 1]
        if blk.A.shape != (b - a, L):
            raise RuntimeError(f"block of configuration {i} has shape {blk.A.shape}, expected {(b - a, L)}")
        A[a:b] = blk.A
        y[a:b] = blk.y
        w[a:b] = blk.w
        kind[a:b] = blk.kind

    if progress is None:
        progress = len(configs) >= 20 and sys.stderr.isatty()
    from tqdm.auto import tqdm
    bar = tqdm(total=len(configs), desc="assembling", unit="config", disable=not progress)
    order = sorted(range(len(configs)), key=lambda i: -nrows[i])     # largest first, as upstream
    own = None
    lists = [None] * len(configs)
    if executor is None:
        nthreads = threads or os.cpu_count() or 1
        if isinstance(model, SitePotential):
            # every neighbour list in one call (the search's set-up is most of a small cell's cost)
            lists = neighbour_lists(model, [(c.numbers, c.positions, c.cell, c.pbc) for c in configs],
                                    threads=nthreads)
        if nthreads == 1:
            for i in order:
                put(i, config_block(model, configs[i], config_weights(configs[i].config_type, weights), E0,
                                    lists[i]))
                bar.update()
            bar.close()
            return LsqSystem(A, y, w, cfg_idx, kind, time.perf_counter() - t0)
        executor = own = ThreadPoolExecutor(max_workers=nthreads)
    try:
        futures = {executor.submit(config_block, model, configs[i],
                                   config_weights(configs[i].config_type, weights), E0, lists[i]): i
                   for i in order}
        for fut in as_completed(futures):
            put(futures[fut], fut.result())
            bar.update()
    finally:
        bar.close()
        if own is not None:
            own.shutdown(cancel_futures=True)
    return LsqSystem(A, y, w, cfg_idx, kind, time.perf_counter() - t0)


def row_weights(system: LsqSystem, configs: list[Config], weights: dict | None) -> np.ndarray:
    """The weights of an assembled system's rows under other ``weights`` (no reassembly needed)."""
    weights = normalise_weights(weights)
    per = np.array([[config_weights(c.config_type, weights)[k] for k in ("E", "F", "V")] for c in configs])
    sq = np.sqrt([c.natoms for c in configs])
    w = per[system.config, system.kind].astype(float)
    ev = system.kind != KIND_F
    w[ev] /= sq[system.config[ev]]
    return w


def row_groups(system: LsqSystem, configs: list[Config]):
    """Rows grouped by (config_type, kind), whose weights any weight set scales by one common factor;
    returns ``[(config_type, kind, rows)]`` and each row's weight-free scale (1/√N for E and V, 1 for F)."""
    types = [c.config_type for c in configs]
    names = sorted(set(types))
    tcode = np.array([names.index(t) for t in types], dtype=np.int64)[system.config]
    key = tcode * 3 + system.kind.astype(np.int64)
    groups = [(names[k // 3], int(k % 3), np.flatnonzero(key == k)) for k in np.unique(key)]
    sq = np.sqrt(np.array([c.natoms for c in configs], dtype=float))
    scale = np.where(system.kind == KIND_F, 1.0, 1.0 / sq[system.config])
    return groups, scale


def group_factor(config_type: str, kind: int, weights: dict) -> float:
    """The common weight of the rows of one (config_type, kind) group under ``weights``."""
    return float(config_weights(config_type, normalise_weights(weights))["EFV"[kind]])


def with_E0(system: LsqSystem, configs: list[Config], old: dict[str, float], new: dict[str, float]) -> np.ndarray:
    """Energy targets of an assembled system re-referenced from E0 ``old`` to ``new`` (eV)."""
    shift = np.array([_e0_sum(c, old) - _e0_sum(c, new) for c in configs])
    y = system.y.copy()
    e = system.kind == KIND_E
    y[e] += shift[system.config[e]]
    return y


def scaled_system(system: LsqSystem, gamma: np.ndarray, inplace: bool = False):
    """Ã = diag(w)·A·diag(1/γ) and ỹ = w∘y. With ``inplace`` A is overwritten (saves a copy)."""
    A = system.A if inplace else np.array(system.A, order="F", copy=True)
    step = 4096
    inv = 1.0 / np.asarray(gamma, dtype=float)
    for a in range(0, A.shape[0], step):       # chunked: no full-size temporaries
        blk = A[a:a + step]
        blk *= system.w[a:a + step, None]
        blk *= inv[None, :]
    return A, system.w * system.y
