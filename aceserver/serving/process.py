"""Process-wide settings of a long-running server, made once, from the main thread, by the commands
that start one (`aceserver serve`, `aceserver ipi`) before their threads do any work.

BLAS threads. OpenBLAS (numpy's and scipy's, pthreads builds) keeps ONE thread count for the whole
process. A limit entered around a call (`threadpoolctl.threadpool_limits`) sets it for every
thread while it is on, and on exit restores what it found on entry; two such limits in concurrent
threads interleave (A enters and saves 2, B enters and saves 1, A exits and restores 2 while B still
runs, B exits and leaves 1), so a per-call cap is lost part-way and the process is left with another
count than it had (benchmarks/blas_threads_check.py shows both). A server therefore sets the count
here, once, and its request, job and refit threads set none.

The default for serving is 1 thread: requests run in parallel on the worker threads (one per CPU)
and large structures on numba's threads, so BLAS threads on top only oversubscribe the cores, and
OpenBLAS's threads spin-wait: on a 2-core AMD EPYC with one core busy, a 64 x 223 by 223 x 223
product (γ's block) took 15.5 ms on BLAS's default 2 threads against 0.15-0.3 ms on one, and
`scipy.linalg.logm` of a 3 x 3 matrix (ASE's FrechetCellFilter, every relax step) 33 ms against 1.4-3.6.
"""
from __future__ import annotations

import os

from threadpoolctl import threadpool_info, threadpool_limits

SERVING_BLAS_THREADS = 1


def usable_cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def check_blas_threads(n) -> int:
    """`n` as a BLAS thread count: an integer from 1 to the CPUs this process may use (more
    threads than cores only wait for each other). ValueError naming the problem otherwise."""
    cpus = usable_cpus()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= cpus:
        raise ValueError(f"BLAS threads must be an integer from 1 to {cpus} (the CPUs this process may use), "
                         f"got {n!r}")
    return n


def set_blas_threads(n: int) -> list[dict]:
    """Set every loaded BLAS library's thread count to `n` for the rest of the process (checked by
    `check_blas_threads`); the libraries as `blas_threads` reads them afterwards. scipy's own
    OpenBLAS is loaded first (scipy.linalg: ASE's cell filters use it), so that it is set too; a
    library loaded later would start with its own default."""
    check_blas_threads(n)
    import scipy.linalg  # noqa: F401  (loads scipy's BLAS; a dependency of ase)

    threadpool_limits(limits=n, user_api="blas")      # not a context: it stays
    return blas_threads()


def blas_threads() -> list[dict]:
    """The BLAS libraries loaded in this process and their thread counts now, as threadpoolctl reads
    them: [{library, version, threading_layer, num_threads}] (no file paths)."""
    return [{"library": lib.get("prefix"), "version": lib.get("version"),
             "threading_layer": lib.get("threading_layer"), "num_threads": lib.get("num_threads")}
            for lib in threadpool_info() if lib.get("user_api") == "blas"]


def describe_blas(libs: list[dict]) -> str:
    """One line for a start-up log: each library with its thread count."""
    return ", ".join(f"{lib['library']} {lib['version']} ({lib['threading_layer']}): {lib['num_threads']}"
                     for lib in libs) or "no BLAS library loaded"
