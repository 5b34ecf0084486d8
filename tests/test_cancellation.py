"""Cancelling an evaluation between blocks of atoms (`SitePotential.evaluate(cancel=...)`): the
numbers are the serial kernel's bit for bit when nobody cancels, and a cancelled evaluation stops at
the next block instead of running to the end (issue 21: a large structure of an abandoned request)."""
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from aceserver.errors import EvaluationCancelled
from aceserver.evaluation import site_potential
from aceserver.serving.http.compute import Abandoned, evaluate_request
from aceserver.serving.http.schema import CalculateRequest


class CancelAfter(threading.Event):
    """An event that reports itself set from its k-th look on, and counts the looks."""

    def __init__(self, k):
        super().__init__()
        self.k, self.looks = k, 0

    def is_set(self):
        self.looks += 1
        return self.looks >= self.k


@pytest.fixture(scope="module")
def big():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(5)      # 1000 atoms
    atoms.rattle(0.05, seed=5)
    return atoms


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(site_potential, "CANCEL_BLOCK_ATOMS", 64)   # 16 blocks of the 1000 atoms


def test_uncancelled_evaluation_is_bit_identical(si_model, big, small_blocks):
    rng = np.random.default_rng(3)
    si_model_c = type(si_model)(si_model.basis, si_model.parameters, si_model.E0,
                                committee=si_model.parameters + rng.normal(scale=1e-3, size=(3, si_model.length_basis)))
    args = (big.numbers, big.positions, big.cell.array, big.pbc)
    for model in (si_model, si_model_c):
        ref = model.evaluate(*args, threads=1, committee=True)
        got = model.evaluate(*args, threads=1, committee=True, cancel=threading.Event())
        for name in ("energy", "forces", "virial", "energies", "energy_committee"):
            a, b = getattr(ref, name), getattr(got, name)
            assert (a is None and b is None) or np.array_equal(np.asarray(a), np.asarray(b)), name


def test_cancel_stops_at_the_next_block(si_model, big, small_blocks):
    args = (big.numbers, big.positions, big.cell.array, big.pbc)
    for k in (1, 2, 5):
        ev = CancelAfter(k)
        with pytest.raises(EvaluationCancelled):
            si_model.evaluate(*args, threads=1, cancel=ev)
        # one look on entry, then one before each block: stopped exactly when it said so
        assert ev.looks == k
    ev = CancelAfter(10 ** 9)
    si_model.evaluate(*args, threads=1, cancel=ev)
    assert ev.looks == 1 + -(-len(big) // 64)      # entry + one per block: every block was looked at


def test_http_request_abandoned_inside_a_structure(si_model, big, small_blocks):
    request = CalculateRequest.model_validate({"structure": {
        "numbers": big.numbers.tolist(), "positions": big.positions.tolist(),
        "cell": big.cell.array.tolist(), "pbc": big.pbc.tolist()}})
    ev = CancelAfter(4)         # before structure 0 (1), evaluate's entry (2), blocks 0 and 1 (3, 4)
    with pytest.raises(Abandoned, match="inside structure"):
        evaluate_request(si_model, request, has_committee=False, threads=1, cancel=ev)
    assert ev.looks == 4


def test_server_warm_up_prepares_the_path_requests_take():
    """The HTTP server reports ready only once the kernels its requests run are compiled (or loaded
    from numba's cache): requests pass a cancel event, so warm-up must too (a fresh process, so the
    kernels' signatures show what warm-up alone did)."""
    code = ("import sys; sys.path.insert(0, 'tests'); from _http_support import model_file; "
            "import aceserver; from aceserver.serving.http import ServedModel; "
            "from aceserver.kernels import site_pass; "
            "p = str(model_file('si')); ServedModel('si', aceserver.load_model(p), p).warm(1); "
            "print(len(site_pass._block_ace1.signatures), len(site_pass.block_outputs.signatures))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"], out.stdout
