"""pacemaker potential through the ASE calculator: aceserver vs pyace's recursive evaluator.

Cu-PBE-core-rep (tests/data) on rattled 108-atom fcc Cu, energy + forces + stress, one thread,
positions moved a little before every call (as in MD). pyace runs in a subprocess of its own
virtual environment (it is not a dependency of aceserver), given by --pyace-python; the two are
timed in alternating rounds in the same run and the script prints µs/atom and the ratio.

    python3 -m venv /tmp/pyace-venv && /tmp/pyace-venv/bin/pip install python-ace
    PYTHONPATH=. python benchmarks/bench_yace.py --pyace-python /tmp/pyace-venv/bin/python

Without --pyace-python (or if that interpreter cannot import pyace) only aceserver is timed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from md_timing import PEER_LOOP, ase_call, md_calls

HERE = Path(__file__).resolve().parent
DEFAULT_POTENTIAL = HERE.parent / "tests" / "data" / "Cu-PBE-core-rep.yace"

# Runs inside the pyace venv: reads {"potential", "numbers", "positions", "cell"} then lines
# "CALLS SEED"; answers each with the seconds of CALLS calls (same moves as the parent's).
WORKER = r"""
import json, sys, time
import numpy as np
from ase import Atoms
from pyace import PyACECalculator
setup = json.loads(sys.stdin.readline())
atoms = Atoms(numbers=setup["numbers"], positions=setup["positions"], cell=setup["cell"], pbc=True)
atoms.calc = PyACECalculator(setup["potential"], recursive_evaluator=True, recursive=True)
atoms.get_potential_energy()
start = atoms.positions.copy()
print("ready", flush=True)
""" + PEER_LOOP


def structure(seed=1):
    from ase.build import bulk
    atoms = bulk("Cu", "fcc", a=3.615, cubic=True) * (3, 3, 3)
    atoms.rattle(0.05, seed=seed)
    return atoms


def ours(potential_path, atoms):
    import numba

    import aceserver
    numba.set_num_threads(1)
    atoms = atoms.copy()
    atoms.calc = aceserver.ACECalculator(potential_path, threads=1)
    atoms.get_potential_energy()
    start = atoms.positions.copy()
    call = ase_call(atoms)
    return lambda calls, seed: md_calls(atoms, start, call, calls, seed)


def pyace_worker(python, potential_path, atoms):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen([python, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    proc.stdin.write(json.dumps({"potential": str(potential_path), "numbers": atoms.numbers.tolist(),
                                 "positions": atoms.positions.tolist(),
                                 "cell": atoms.cell[:].tolist()}) + "\n")
    proc.stdin.flush()
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        return None

    def run(calls, seed):
        proc.stdin.write(f"{calls} {seed}\n")
        proc.stdin.flush()
        return float(proc.stdout.readline())
    run.close = lambda: (proc.stdin.close(), proc.wait(timeout=30))
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--potential", default=str(DEFAULT_POTENTIAL))
    ap.add_argument("--pyace-python", help="python of a venv with python-ace installed")
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds")
    ap.add_argument("--calls", type=int, default=10, help="calls per round")
    args = ap.parse_args()
    atoms = structure()
    n = len(atoms)
    runners = {"aceserver": ours(args.potential, atoms)}
    if args.pyace_python:
        worker = pyace_worker(args.pyace_python, args.potential, atoms)
        if worker is None:
            print(f"pyace could not be started with {args.pyace_python}; timing aceserver only")
        else:
            runners["pyace (recursive)"] = worker
    times = {k: [] for k in runners}
    for r in range(args.rounds):
        for name, run in runners.items():             # alternate: one round of each in turn
            times[name].append(run(args.calls, seed=r) / args.calls)
    print(f"{Path(args.potential).name}, fcc Cu {n} atoms rattled, E+F+stress via ASE, 1 thread, "
          f"{args.rounds} rounds x {args.calls} calls (median of rounds)")
    med = {k: float(np.median(v)) / n * 1e6 for k, v in times.items()}
    for name, us in med.items():
        print(f"  {name:>18}: {us:8.1f} µs/atom   (best round {min(times[name]) / n * 1e6:.1f})")
    if len(med) == 2:
        print(f"  ratio aceserver / pyace: {med['aceserver'] / med['pyace (recursive)']:.3f}")
        runners["pyace (recursive)"].close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
