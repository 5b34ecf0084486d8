"""Does a BLAS thread limit set in a worker thread take effect? Prints numbers, asserts nothing.

    python benchmarks/blas_threads_check.py [--rounds 7]

Three ways, alternated in every round (medians, ms), each timing a small product (64 x 223 @
223 x 223, γ's block product) and `scipy.linalg.logm` of a 3 x 3 near-identity matrix (what ASE's
FrechetCellFilter does every step), both run in a worker thread (`threading.Thread`, as the
server's request, job and refit threads):
  default  no limit;
  main     `threadpool_limits(1, user_api="blas")` entered in the main thread, work in the worker;
  worker   the same limit entered in the worker itself, around its work.
For each, the BLAS thread counts that threadpoolctl reports (numpy's and scipy's OpenBLAS), read in
the worker while the limit is on, and read in the main thread after the worker's limit was entered.
Then two workers whose limits overlap (A enters, B enters, A leaves while B works): the count B
works with, and the count left in the process once both have left.

Found with numpy 2.4's OpenBLAS 0.3.31 and scipy 1.17's 0.3.30 (pthreads): the count is one per
process, and a worker's limit sets it as well as the main thread's does; but overlapping limits
restore each other's saved counts, so B loses its cap and the process keeps 1 afterwards.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time

import numpy as np
import scipy.linalg
from threadpoolctl import threadpool_info, threadpool_limits


def counts() -> str:
    return " ".join(f"{lib['prefix']}={lib['num_threads']}" for lib in threadpool_info()
                    if lib["user_api"] == "blas")


def work(a, b, m, reps: int = 20) -> tuple[float, float]:
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    t1 = time.perf_counter()
    for _ in range(reps):
        scipy.linalg.logm(m)
    t2 = time.perf_counter()
    return (t1 - t0) / reps * 1e3, (t2 - t1) / reps * 1e3


def in_worker(kind: str, args, seen: dict) -> tuple[float, float]:
    out = {}

    def run():
        if kind == "worker":
            with threadpool_limits(1, user_api="blas"):
                seen["worker reads, in worker"] = counts()
                entered.set()
                release.wait()
                out["t"] = work(*args)
        else:
            seen[f"{kind}: worker reads"] = counts()
            out["t"] = work(*args)

    entered, release = threading.Event(), threading.Event()
    t = threading.Thread(target=run)
    if kind == "main":
        with threadpool_limits(1, user_api="blas"):
            t.start()
            t.join()
        return out["t"]
    t.start()
    if kind == "worker":
        entered.wait()
        seen["worker: main reads, while worker's limit is on"] = counts()
        release.set()
    t.join()
    return out["t"]


def overlapping(args) -> tuple[str, tuple[float, float], str]:
    """(counts B reads after A left, B's timings then, counts once both left); restores the start."""
    start = [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]
    a_in, a_out, out = threading.Event(), threading.Event(), {}

    def a():
        with threadpool_limits(1, user_api="blas"):
            a_in.set()
            a_out.wait()

    def b():
        a_in.wait()
        with threadpool_limits(1, user_api="blas"):
            a_out.set()
            ta.join()
            out["reads"], out["t"] = counts(), work(*args)
    ta, tb = threading.Thread(target=a), threading.Thread(target=b)
    ta.start()
    tb.start()
    tb.join()
    left = counts()
    threadpool_limits(max(start), user_api="blas")
    return out["reads"], out["t"], left


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    rounds = p.parse_args().rounds
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 223)), rng.standard_normal((223, 223))
    m = np.eye(3) + 1e-3 * rng.standard_normal((3, 3))
    scipy.linalg.logm(m)                      # load scipy's LAPACK before reading the counts
    print("process start (main reads):", counts())
    kinds = ("default", "main", "worker")
    times = {k: [] for k in kinds}
    seen: dict[str, str] = {}
    for _ in range(rounds):
        for k in kinds:
            times[k].append(in_worker(k, (a, b, m), seen))
    for k, v in seen.items():
        print(f"{k}: {v}")
    print(f"medians over {rounds} rounds, in a worker thread (ms): product 64x223@223x223, logm 3x3")
    for k in kinds:
        mm = statistics.median(t[0] for t in times[k])
        ml = statistics.median(t[1] for t in times[k])
        print(f"  limit from {k:8s} product {mm:7.3f}  logm {ml:7.3f}")
    reads, (mm, ml), left = overlapping((a, b, m))
    print(f"overlapping limits in two workers: B reads {reads} after A left (product {mm:.3f} ms, "
          f"logm {ml:.3f} ms); left in the process after both: {left}")


if __name__ == "__main__":
    main()
