"""The serial share of one `evaluate_many` call: how much of the batch holds the GIL, and the
2-thread speed-up that allows. Prints numbers, asserts nothing.

    python benchmarks/profile_small.py [--rounds 7] [--count 1000] [--model Si-tiny] [--keep N] [--freeze]

The batch is bench_small's (`--count` random 1-2-atom periodic cells). Each round runs the call
with threads=1 and threads=2 untraced, then both traced: the stages of `evaluation.many` and the
kernels they call are wrapped (in this process only) with a timer that books each call's own
CPU time (its callees' taken off) to its stage on its thread. CPU time (`time.thread_time`) is
used because it does not count the time a thread waits for a core or for the GIL, so it holds on
a shared machine. Kernels (numba, nogil) and numpy's stacked inv/matmul in
`batch_neighbours.bases` (their loops release the GIL) are the parallel part; everything else
holds the GIL (each kernel's numba dispatch, a few µs, is booked to the kernel; the timer's
own cost, ~2 µs a wrapped call, to the GIL-held stages: traced minus untraced CPU time shows it,
so s below is an upper bound). Medians over rounds, µs.

threads=1: serial share s = GIL-held / total; Amdahl's bound for 2 threads 1 / (s + (1 - s) / 2);
the cyclic garbage collector's part of it (GC-tracked `Evaluation`s, one a structure, trigger
collections; with --keep N the results of the last N calls stay alive, as a caller's would, and
full collections over every object of the process, numba's included, come every few dozen calls;
--freeze freezes the heap after the warm-up round, as `aceserver serve` does once its models are warm).
threads=2: the main thread's own work before and after the pool, and each pool thread's
GIL-held and kernel time; then that run replayed on two free cores with one GIL (the pieces in
their order, each taken by the first free worker as the pool's queue hands them out, each
piece's GIL-held and kernel stretches in their order, a GIL stretch waiting for the GIL, first
come first served): the wall time and the speed-up over the same work on one core that the
code allows on a machine with two free cores (the kernels' own scaling, memory bandwidth and
clock aside), beside the speed-up measured here (which a busy machine caps: bench_small prints
the ceiling).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_small import MODELS, random_cells  # noqa: E402

import aceserver  # noqa: E402
from aceserver.evaluation import many  # noqa: E402

BN = many.BN
# stages of this and of earlier versions of `many` (absent ones are skipped, so that a base
# checkout can be timed by the same script); stage None: parallel
TRACED = [(many, "_drive_atoms", "read the Atoms"), (many, "_read_atoms", "read the Atoms"),
          (many, "_chunk", "chunk"), (many._Batch, "__init__", "pack (_Batch)"),
          (many._Run, "checked", "checks"), (many._Run, "search_batch", "search glue"),
          (many._Run, "spend", "budget"), (many._Run, "run_batch", "pass glue"),
          (many._Run, "collect", "Evaluation objects"), (many._Run, "run_pieces", "pieces glue"),
          (many, "committee_sums", "pass glue"), (many, "_run", "pool"), (BN, "bases", None)]
TRACED += [(many, n, None) for n in ("check_packed", "after_search", "neutralise", "outputs",
                                     "pass_range", "structure_sums")]
TRACED += [(BN, n, None) for n in ("search", "well_shaped", "reduce_many", "_column_norms")]
_local = threading.local()
_book: dict = defaultdict(float)     # (thread name, stage) -> µs of own CPU time
_spans: dict = defaultdict(list)     # (thread name, "top" | "kernel" | "pool") -> [(start, end, stage)]


def _traced(fn, stage):
    def wrapper(*args, **kwargs):
        stack = _local.__dict__.setdefault("stack", [])     # [own stage, callees' CPU time]
        outer = stage is None and not any(st is None for st, _ in stack)
        stack.append([stage, 0.0])
        c0 = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            c1 = time.thread_time()
            inner = stack.pop()[1]
            name = threading.current_thread().name
            if stack:
                stack[-1][1] += c1 - c0
            else:
                batch = args[1] if stage == "pass glue" and len(args) > 1 else None   # run_batch
                first = getattr(batch, "index", None)
                _spans[name, "top"].append((c0, c1, stage, first[0] if first else None))
            if outer:                                        # a parallel stretch
                _spans[name, "kernel"].append((c0, c1, stage))
            elif stage == "pool" and name == threading.main_thread().name:
                _spans[name, "pool"].append((c0, c1, stage))
            _book[name, stage or "parallel"] += (c1 - c0 - inner) * 1e6
            _book[name, "calls"] += 1
    return wrapper


_gc: dict = defaultdict(float)       # µs in the cyclic garbage collector, collections by generation


def _timer_cost(n=20000) -> float:
    """µs of CPU time that wrapping adds to one call (the timer itself): an empty function called
    n times from a wrapped one, wrapped and bare."""
    def loop(fn):
        for _ in range(n):
            fn()
    bare = lambda: None  # noqa: E731
    wrapped = _traced(bare, "timer")
    took = {}
    for fn in (bare, wrapped, bare, wrapped):
        c0 = time.thread_time()
        _traced(loop, "timer")(fn)
        took[fn] = min(took.get(fn, 1e9), time.thread_time() - c0)
    _book.clear()
    _spans.clear()
    return (took[wrapped] - took[bare]) / n * 1e6


def _collector(phase, info, started=[0.0]):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        _gc["µs"] += (time.perf_counter() - started[0]) * 1e6
        _gc[info["generation"]] += 1


def _trace(on: bool, saved={}):
    for owner, name, stage in TRACED:
        if not hasattr(owner, name):
            continue
        if on:
            saved[owner, name] = getattr(owner, name)
            setattr(owner, name, _traced(saved[owner, name], stage))
        else:
            setattr(owner, name, saved[owner, name])


def _pieces(name) -> list:
    """A pool thread's pieces: (its first structure, its work as ("gil" | "kernel", µs)
    stretches in order); a piece ends with its `run_batch` (its top calls before that are its
    reading and packing); what no kernel spans held the GIL."""
    kernels = sorted(_spans[name, "kernel"])
    out, start = [], None
    for c0, c1, stage, first in _spans[name, "top"]:
        start = c0 if start is None else start
        if stage != "pass glue":
            continue
        piece, at = [], start
        for a, b, _ in kernels:
            if start <= a < c1:
                piece += [("gil", (a - at) * 1e6), ("kernel", (b - a) * 1e6)]
                at = b
        out.append((first, piece + [("gil", (c1 - at) * 1e6)]))
        start = None
    return out


def _two_cores(before, pieces, after) -> float:
    """Wall µs of a threads=2 call on two free cores and one GIL: the main thread's `before`,
    then the pieces in order, each taken by the first of two workers to be free (the pool's
    queue), a GIL stretch starting when the GIL is free (first come first served), then `after`."""
    gil, ready, todo, pieces = before, [before, before], [[], []], list(pieces)
    while True:
        live = [w for w in (0, 1) if todo[w] or pieces]
        if not live:
            return max([gil, *ready]) + after
        w = min(live, key=lambda w: ready[w])
        if not todo[w]:
            todo[w] = list(pieces.pop(0))
            continue
        kind, d = todo[w].pop(0)
        start = max(ready[w], gil) if kind == "gil" else ready[w]
        ready[w] = start + d
        if kind == "gil":
            gil = ready[w]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--model", default="Si-tiny", choices=list(MODELS))
    ap.add_argument("--pieces", type=int, help="many.PIECES_PER_THREAD for this run")
    ap.add_argument("--keep", type=int, default=0,
                    help="keep the results of the last KEEP calls alive, as a caller that collects "
                         "them does (0: each call's results are freed after its timing)")
    ap.add_argument("--freeze", action="store_true",
                    help="gc.freeze() after the warm-up round, as `aceserver serve` does once warm")
    args = ap.parse_args()
    if args.pieces:
        many.PIECES_PER_THREAD = args.pieces
    path, Z, vpa = MODELS[args.model]
    model = aceserver.load_model(str(REPO / path))
    cells = random_cells(Z, vpa, args.count)
    main_name = threading.main_thread().name
    rows, kept = defaultdict(list), []
    args.timer = _timer_cost()
    gc.callbacks.append(_collector)
    for r in range(args.rounds + 1):         # round 0 warms up (compiles, the pool, the caches)
        for traced in (False, True):
            if traced:
                _trace(True)
            for threads in (1, 2):
                _book.clear()
                _spans.clear()
                t0, c0 = time.perf_counter(), time.thread_time()
                _gc.clear()
                results = model.evaluate_many(cells, threads=threads)
                t1, c1 = time.perf_counter(), time.thread_time()
                kept.append(results)          # freed outside the timing
                del results, kept[:-args.keep or None]
                if not r:
                    continue
                row = {"wall": (t1 - t0) * 1e6, "cpu": (c1 - c0) * 1e6, "book": dict(_book),
                       "gc": dict(_gc)}
                if traced and threads == 2:
                    pool = _spans[main_name, "pool"]
                    row["before"] = ((pool[0][0] if pool else c1) - c0) * 1e6
                    row["after"] = ((c1 - pool[-1][1]) if pool else 0.0) * 1e6
                    row["threads"] = {th: _pieces(th) for th, kind in _spans
                                      if kind == "top" and th != main_name}
                    pieces = [p for _, p in sorted(p for ps in row["threads"].values() for p in ps)]
                    row["sim"] = _two_cores(row["before"], pieces, row["after"])
                    row["work"] = row["before"] + row["after"] + sum(
                        d for p in pieces for _, d in p)                     # on one core
                rows[traced, threads].append(row)
            if traced:
                _trace(False)
        if not r and args.freeze:           # what start-up made, out of the collector's passes
            gc.collect()
            gc.freeze()
    _report(args, cells, rows, main_name)
    return 0


def _report(args, cells, rows, main_name):
    med = statistics.median
    print(f"{args.model}: {sum(map(len, cells))} atoms in {args.count} cells, {args.rounds} rounds, "
          f"{many.PIECES_PER_THREAD} piece(s) per thread; "
          f"medians, µs of CPU time unless marked wall")
    u1, t1, u2, t2 = rows[False, 1], rows[True, 1], rows[False, 2], rows[True, 2]
    par = med([r["book"].get((main_name, "parallel"), 0.0) for r in t1])
    s = med([1 - r["book"].get((main_name, "parallel"), 0.0) / r["cpu"] for r in t1])
    timer = med([r["book"].get((main_name, "calls"), 0) for r in t1]) * args.timer
    s0 = med([1 - r["book"].get((main_name, "parallel"), 0.0) / (r["cpu"] - timer) for r in t1])
    print(f"threads=1: {med([r['cpu'] for r in u1]):.0f} (wall {med([r['wall'] for r in u1]):.0f}); "
          f"traced {med([r['cpu'] for r in t1]):.0f}: parallel {par:.0f}, GIL-held "
          f"{med([r['cpu'] for r in t1]) - par:.0f}, s = {s:.3f}: Amdahl's bound for 2 threads "
          f"x{1 / (s + (1 - s) / 2):.2f}")
    print(f"  the timer's own cost {timer:.0f} ({args.timer:.1f} a wrapped call); without it s = {s0:.3f}, "
          f"Amdahl's bound x{1 / (s0 + (1 - s0) / 2):.2f}")
    print(f"  of which the garbage collector (untraced calls, "
          f"{'results freed after each call' if not args.keep else f'the last {args.keep} calls kept'}"
          f"{', heap frozen after warm-up' if args.freeze else ''}): "
          f"{med([r['gc'].get('µs', 0.0) for r in u1]):.0f}; collections per call by generation "
          + "/".join(f"{sum(r['gc'].get(g, 0) for r in u1) / len(u1):.2f}" for g in range(3)))
    stages = sorted({st for r in t1 for th, st in r["book"] if th == main_name} - {"parallel", "calls"})
    by = [(med([r["book"].get((main_name, st), 0.0) for r in t1]), st) for st in stages]
    by.append((med([r["cpu"] - sum(v for (th, st), v in r["book"].items()
                                   if th == main_name and st != "calls")
                    for r in t1]), "untraced (evaluate_many itself)"))
    print("  GIL-held by stage: " + ", ".join(f"{st} {t:.0f}" for t, st in sorted(by, reverse=True)))
    print(f"threads=2: wall {med([r['wall'] for r in u2]):.0f} here; the main thread alone: before "
          f"the pool {med([r['before'] for r in t2]):.0f}, after it {med([r['after'] for r in t2]):.0f}")
    for th in sorted({th for r in t2 for th in r["threads"]}):
        g = med([sum(d for _, p in r["threads"].get(th, []) for k, d in p if k == "gil") for r in t2])
        k = med([sum(d for _, p in r["threads"].get(th, []) for k, d in p if k == "kernel")
                 for r in t2])
        print(f"  {th}: GIL-held {g:.0f} + kernels {k:.0f}")
    print(f"  replayed on two free cores, one GIL: wall {med([r['sim'] for r in t2]):.0f}, "
          f"x{med([r['work'] / r['sim'] for r in t2]):.2f} of its work on one core "
          f"({med([r['work'] for r in t2]):.0f}); measured here (wall, per-round ratios) "
          f"x{med([a['wall'] / b['wall'] for a, b in zip(u1, u2)]):.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
