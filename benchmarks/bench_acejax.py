"""aceserver's ASE calculator against ace-jax's on the same ace1 basis (Si, order 3, totaldegree 12,
223 functions, rcut 5.5 Å): rattled 64-atom diamond Si, energy + forces + stress per call, one
thread, positions moved by 0.002 Å before every call (as in MD), alternating rounds in one run.

ace-jax runs in a subprocess of its own virtual environment (it is not a dependency of
aceserver), given by --acejax-python; its model is built with ace_jax.basis.build_model and
random readout weights (speed does not depend on their values). Ours is models/Si-tiny (the
same basis, with its committee of 10; --no-committee leaves the committee out).

    python3 -m venv /tmp/acejax-venv && /tmp/acejax-venv/bin/pip install ace-jax ase
    PYTHONPATH=. python benchmarks/bench_acejax.py --acejax-python /tmp/acejax-venv/bin/python

Also prints the ASE-calculator overhead of ours: the calculator (default Verlet skin, and
skin=0) against `model.evaluate` with the same options, timed the same way.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

import numpy as np
from md_timing import PEER_LOOP, ase_call, md_calls

ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, os, sys, time
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import numpy as np
import jax
jax.config.update("jax_enable_x64", True)
from ase import Atoms
from ace_jax import ACECalculator
from ace_jax.basis.model import build_model
setup = json.loads(sys.stdin.readline())
basis = build_model(["Si"], 3, 12, rcut=5.5)
model, meta = basis.eval_pair()
rng = np.random.default_rng(3)
model = jax.tree_util.tree_map(
    lambda x: (x + 1e-3 * rng.normal(size=np.shape(x))) if np.issubdtype(np.asarray(x).dtype, np.floating) else x,
    model)
atoms = Atoms(numbers=setup["numbers"], positions=setup["positions"], cell=setup["cell"], pbc=True)
atoms.calc = ACECalculator(model, meta)
atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress()
start = atoms.positions.copy()
print(json.dumps({"len_basis": int(meta["len_basis"])}), flush=True)
""" + PEER_LOOP


def structure():
    from ase.build import bulk
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=1)
    return atoms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--acejax-python", help="python of a venv with ace-jax installed")
    ap.add_argument("--model", default=str(ROOT / "models/Si-tiny/Si-tiny.json"))
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--no-committee", action="store_true")
    args = ap.parse_args()

    import numba
    numba.set_num_threads(1)
    import aceserver
    from aceserver.loading import load_model
    model = load_model(args.model)
    committee = not args.no_committee
    atoms = structure()
    n = len(atoms)

    ours = atoms.copy()
    ours.calc = aceserver.ACECalculator(model, threads=1, committee=committee)
    plain = atoms.copy()
    plain.calc = aceserver.ACECalculator(model, threads=1, committee=committee, skin=0)
    bare = atoms.copy()

    start = atoms.positions.copy()

    def eval_call():
        r = model.evaluate(bare.numbers, bare.positions, bare.cell[:], bare.pbc, threads=1,
                           committee=committee)
        r.stress(bare.cell[:])

    ours_call, plain_call = ase_call(ours), ase_call(plain)
    for c in (ours_call, plain_call, eval_call):
        c()

    worker = None
    if args.acejax_python:
        env = dict(os.environ, OMP_NUM_THREADS="1", XLA_FLAGS="--xla_cpu_multi_thread_eigen=false "
                   "intra_op_parallelism_threads=1", JAX_PLATFORMS="cpu")
        worker = subprocess.Popen([args.acejax_python, "-c", WORKER], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)
        worker.stdin.write(json.dumps({"numbers": atoms.numbers.tolist(),
                                       "positions": atoms.positions.tolist(),
                                       "cell": atoms.cell.array.tolist()}) + "\n")
        worker.stdin.flush()
        info = json.loads(worker.stdout.readline())
        print(f"ace-jax basis: {info['len_basis']} functions; ours: {model.length_basis}")

    rows = {k: [] for k in ("calc", "calc_skin0", "evaluate", "acejax")}
    for r in range(args.rounds):
        rows["calc"].append(md_calls(ours, start, ours_call, args.calls, r) / args.calls / n * 1e6)
        if worker:
            worker.stdin.write(f"{args.calls} {r}\n")
            worker.stdin.flush()
            rows["acejax"].append(float(worker.stdout.readline()) / args.calls / n * 1e6)
        for key, a, call in (("calc_skin0", plain, plain_call), ("evaluate", bare, eval_call)):
            rows[key].append(md_calls(a, start, call, args.calls, r) / args.calls / n * 1e6)
    if worker:
        worker.stdin.close()
        worker.wait()
    med = {k: float(np.median(v)) for k, v in rows.items() if v}
    print(f"Si td12 ({model.length_basis} functions, committee {'on' if committee else 'off'}), "
          f"64-atom diamond rattled, E+F+stress, 1 thread, {args.rounds} rounds x {args.calls} "
          f"calls (median of rounds, µs/atom)")
    print(f"  aceserver ACECalculator (skin 0.3 Å):  {med['calc']:8.1f}")
    print(f"  aceserver ACECalculator (skin 0):      {med['calc_skin0']:8.1f}")
    print(f"  aceserver model.evaluate:              {med['evaluate']:8.1f}")
    if "acejax" in med:
        print(f"  ace-jax ACECalculator:                 {med['acejax']:8.1f}")
        print(f"  ratio aceserver calculator / ace-jax:  {med['calc'] / med['acejax']:.3f}")
    print(f"  calculator overhead over evaluate: skin 0: {med['calc_skin0'] / med['evaluate'] - 1:+.1%}, "
          f"default skin: {med['calc'] / med['evaluate'] - 1:+.1%}")


if __name__ == "__main__":
    main()
