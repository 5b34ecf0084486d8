"""Process-wide settings of a long-running server: its BLAS threads, made once, from the main
thread, by the commands that start one (`aceserver serve`, `aceserver ipi`) before their threads
do any work; and its garbage collector (`Heap`: the heap frozen after start-up, times of collections).

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

The garbage collector. After start-up (models loaded, kernels compiled and warmed) nearly every
object of a server lives as long as it does: numba's dispatchers and compiled-code metadata, the
models (~186k objects in a server of Si-tiny). Each full (generation 2) collection walks them all,
and an HTTP batch of 1000 small cells makes enough objects to trigger one every 4 batches: the
collector took 24 ms per batch, against 2.2 ms with them frozen out of its reach by `Heap.freeze`
(`gc.freeze`; benchmarks/bench_gc_freeze.py, a 2-core AMD EPYC under load).
A swapped-out model must still be freed: `Heap.release` thaws the heap (a frozen object in a
reference cycle would never be collected; the models hold none today, so they are freed by their
last reference anyway, but nothing enforces that), and the next `freeze` freezes again only once
every released object is gone; until then (a request or a job still running on the old model)
collections walk the whole heap as they do without freezing. Objects that requests in flight hold
when the heap is frozen are frozen with it: they are still freed when dropped, unless they hold a
cycle, which then waits for the next thaw.
"""
from __future__ import annotations

import gc
import os
import threading
import time
import weakref

from threadpoolctl import threadpool_info, threadpool_limits


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


class Heap:
    """The server's garbage collector: the collections' count and time per generation (from
    `install` to `uninstall`), the heap frozen after start-up (`freeze`), thawed when a model is
    swapped out (`release`). One per server; safe to call from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._released: list[weakref.ref] = []
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started: float | None = None
        self.frozen = False                  # frozen since the last release or thaw
        self._closed = False

    def _timer(self, phase: str, info: dict) -> None:
        # collections never overlap (the collector runs under the GIL and does not re-enter)
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            g = info["generation"]
            self.collections[g] += 1
            self.seconds[g] += time.perf_counter() - self._started
            self._started = None

    def install(self) -> None:
        if self._timer not in gc.callbacks:
            gc.callbacks.append(self._timer)

    def uninstall(self) -> None:
        """Stop timing and thaw: the process is left as it was (an embedding one included)."""
        if self._timer in gc.callbacks:
            gc.callbacks.remove(self._timer)
        with self._lock:
            self._closed = True           # a freeze still in flight then freezes nothing
        self.thaw()

    def freeze(self) -> bool:
        """Collect, then freeze every object left, unless a released one is still alive: then
        nothing is frozen and False is returned (try again later)."""
        with self._lock:
            if self._closed:
                return True
            gc.collect()
            self._released = [r for r in self._released if r() is not None]
            if self._released:
                return False
            gc.freeze()
            self.frozen = True
            return True

    def release(self, obj) -> None:
        """`obj` (a swapped-out model) is no longer served: thaw the heap, so that it can be collected
        once whoever still holds it lets go; `freeze` waits for that."""
        with self._lock:
            gc.unfreeze()
            self.frozen = False
            self._released.append(weakref.ref(obj))

    def thaw(self) -> None:
        with self._lock:
            gc.unfreeze()
            self.frozen = False
            self._released.clear()

    def status(self) -> dict:
        """For /metrics.json: objects frozen now, released objects still alive, collections and
        their seconds per generation."""
        with self._lock:
            waiting = sum(r() is not None for r in self._released)
        return {"frozen": gc.get_freeze_count(), "released_alive": waiting, "collections": list(self.collections),
                "seconds": [round(t, 6) for t in self.seconds]}
