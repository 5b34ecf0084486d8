"""The process's BLAS thread count (`aceserver.serving.process`, `aceserver serve|ipi --blas-threads`).

* the count is checked (an integer from 1 to the usable CPUs) and a bad one stops the command
  with a message naming the flag, before any model is loaded;
* a served process reports, in /metrics.json, what threadpoolctl reads in it after start-up:
  every BLAS library at the count asked for (the environment is set so that OpenBLAS's own
  default would read differently, else the check could not fail);
* with one count, every number is reproduced bit for bit; between 1 and 2 threads energies,
  forces, virials and per-atom energies (numba's kernels) are too, but γ and the committee site
  energies are BLAS products, and OpenBLAS 0.3.31's dgemm sums in another order on one thread
  than on two: measured, γ of a 216-atom cell differs in 102 of 216 atoms by up to 1.2e-12
  relative (a raw 216 x 223 by 223 x 223 product by ~6e-16 of its largest entry), and in a batch
  a 4-atom cell packed with it by up to 3.5e-12; the committee site energies (10 x 223 by
  223 x n) came out equal, but nothing promises it. So those two are held to the rounding bound of
  an L-term dot product summed in another order (as tests/test_many_uncertainty.py does for
  evaluate_many against evaluate).
  The evaluations run in a worker thread, as in a server, under a count set from the main thread.
"""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from ase.build import bulk
from threadpoolctl import threadpool_info, threadpool_limits

from _http_support import Server, model_file
from aceserver.loading import load_model
from aceserver.serving import process

REPO = Path(__file__).resolve().parents[1]
CPUS = process.usable_cpus()
U = np.finfo(float).eps / 2


def gamma_L(n):
    return n * U / (1 - n * U)


@pytest.mark.parametrize("bad", [0, -1, CPUS + 1, 1.5, True, "1", None])
def test_bad_counts_are_refused(bad):
    with pytest.raises(ValueError, match=r"BLAS threads must be an integer from 1 to \d+"):
        process.check_blas_threads(bad)


@pytest.mark.parametrize("command", [["serve", "no-such-model.json"],
                                     ["ipi", "no-such-model.json", "--structure", "x.xyz", "--unix", "t"]])
@pytest.mark.parametrize("value", ["0", str(CPUS + 1)])
def test_commands_refuse_a_bad_count_before_loading(command, value):
    out = subprocess.run([sys.executable, "-m", "aceserver.cli", *command, "--blas-threads", value],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "--blas-threads" in out.stderr and f"got {value}" in out.stderr
    assert "no-such-model" not in out.stderr         # refused before the model was looked at


def _served_blas(args: list[str], env: dict) -> tuple[dict, str]:
    with Server([f"si={model_file('si')}", *args], env=env) as server:
        doc = httpx.get(f"{server.url}/metrics.json", timeout=30).json()["process"]
        return doc, server.output()


@pytest.mark.skipif(CPUS < 2, reason="OpenBLAS caps its threads at the CPUs: 1 and 2 read the same")
@pytest.mark.parametrize("args, env, expect", [
    ([], {"OPENBLAS_NUM_THREADS": "2"}, 1),                    # the default, against OpenBLAS's 2
    (["--blas-threads", "2"], {"OPENBLAS_NUM_THREADS": "1"}, 2),
])
def test_served_process_runs_with_the_count(args, env, expect):
    doc, log = _served_blas(args, env)
    assert doc["blas_threads"] == expect
    assert doc["blas"], "no BLAS library reported"
    assert all(lib["num_threads"] == expect for lib in doc["blas"]), doc
    assert all("/" not in str(v) for lib in doc["blas"] for v in lib.values())   # no file paths
    assert f"BLAS threads {expect} (" in log


def _in_worker(fn):
    out = {}

    def run():
        out["seen"] = {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}
        out["value"] = fn()
    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out["seen"], out["value"]


@pytest.mark.skipif(CPUS < 2, reason="OpenBLAS caps its threads at the CPUs: 1 and 2 read the same")
def test_numbers_and_blas_threads():
    import scipy.linalg  # noqa: F401  (its BLAS loaded, so the limits below reach it too)

    model = load_model(REPO / "models" / "Si-tiny" / "Si-tiny.json")   # L = 223, active set, 10 members
    L, A_inv = model.descriptor_sizes["Si"], model.active_set.inverses["Si"]
    W = np.stack([model.descriptor_weights(t) for t in model.committee])[:, 0, :L]      # (K, L)
    rng = np.random.default_rng(3)
    big = bulk("Si", cubic=True).repeat(3)             # 216 atoms: γ's product 216 x 223 by 223 x 223
    big.positions += rng.normal(scale=0.1, size=big.positions.shape)
    small = [bulk("Si").repeat((1 + i % 2, 1, 1)) for i in range(6)]
    for a in small:
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
    structures = [big, big, *small]                    # evaluate's, then evaluate_many's
    options = dict(gamma=True, energies_committee=True, committee=True)

    def evaluate():
        one = model.evaluate(big.numbers, big.positions, big.cell.array, big.pbc, threads=1, **options)
        return [one, *model.evaluate_many([big, *small], threads=1, **options)]

    results = {1: [], 2: []}
    for n in (1, 2, 1):
        with threadpool_limits(limits=n, user_api="blas"):            # the main thread sets it, as a server
            seen, value = _in_worker(evaluate)
        assert seen == {n}, f"the worker read BLAS threads {seen}, the main thread set {n}"
        results[n].append(value)
    numba_fields = ("energy", "forces", "virial", "energies", "energy_committee")
    blas_fields = ("gamma", "energies_committee")
    for a, b in zip(results[1][0], results[1][1]):      # one count: every bit reproduced
        for f in numba_fields + blas_fields:
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    for a, b, atoms in zip(results[1][0], results[2][0], structures):
        for f in numba_fields:
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
        # γ and the committee site energies: within the rounding of an L-term dot product summed in
        # another order (test_many_uncertainty.py's bounds)
        rows = model.descriptors(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, threads=1)[:, :L]
        bound = 2 * gamma_L(L) * (np.abs(rows) @ np.abs(A_inv)).max(axis=1)
        assert (np.abs(a.gamma - b.gamma) <= bound).all()
        E = a.energies_committee
        bound = 2 * gamma_L(L) * (np.abs(W) @ np.abs(rows).T) + 2 * U * np.abs(E)
        assert (np.abs(b.energies_committee - E) <= bound).all()
