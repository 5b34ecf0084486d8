"""The MD-like timing loop shared by the benchmarks that race a peer code in its own virtual
environment (bench_yace.py: pyace, bench_acejax.py: ace-jax): every call moves all atoms by
0.002 Å (normal, seeded) and asks for energy, forces and stress, starting from the same
positions for the same seed on both sides.

PEER_LOOP is the tail of a peer's worker script (which has set up `atoms` with its calculator
and `start`, its initial positions): it reads "CALLS SEED" lines and answers each with the
seconds those calls took. `md_calls` is the same loop for our side, in this process.
"""
import time

import numpy as np

PEER_LOOP = r"""
for line in sys.stdin:
    calls, seed = (int(x) for x in line.split())
    rng = np.random.default_rng(seed)
    atoms.positions = start
    t = time.perf_counter()
    for _ in range(calls):
        atoms.positions = atoms.positions + rng.normal(scale=0.002, size=atoms.positions.shape)
        atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress()
    print(time.perf_counter() - t, flush=True)
"""


def md_calls(atoms, start, call, calls, seed):
    """Seconds for `calls` calls of `call()` (which evaluates `atoms`), each after a random move
    of every atom, starting from positions `start`."""
    rng = np.random.default_rng(seed)
    atoms.positions = start
    t = time.perf_counter()
    for _ in range(calls):
        atoms.positions = atoms.positions + rng.normal(scale=0.002, size=atoms.positions.shape)
        call()
    return time.perf_counter() - t


def ase_call(atoms):
    """Energy, forces and stress of `atoms` through its ASE calculator."""
    return lambda: (atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress())
