"""Snapshot of every number the evaluator and the exporters produce, for refactors that must not
change any: `record` writes one .npz (no pickle), `compare` recomputes and demands exact equality.

    python -m tools.numbers_snapshot record OUT.npz [--yace FILE.yace ...]
    python -m tools.numbers_snapshot compare OUT.npz [--yace FILE.yace ...]

Covered, through public interfaces only (so the same script runs before and after a move):
every shipped model (models/*/) and the given .yace potentials (default: tests/data/*.yace), each
on a rattled periodic bulk cell, a large cell (threaded kernels), a non-periodic cluster and a
slab, with committee energies and forces where the model has a committee, the fitting rows
(`basis_rows`) of ace1 models, and `aceserver convert` in both directions (.yace -> .json,
.json -> .yace; the export's time stamp line excluded). Units: eV, Å.
"""
from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from ase.build import bulk

import aceserver

ROOT = Path(__file__).resolve().parents[1]
EXPORTED = ("Si-tiny",)         # ace1 models also exported to .yace (the radial fit takes seconds)


def structures(elements):
    """Fixed structures from the model's elements: bulk, large bulk, cluster, slab."""
    a = 4.0 if len(elements) > 1 or elements[0] not in ("Si", "Ge") else 5.5
    lat = "fcc" if a == 4.0 else "diamond"
    base = bulk(elements[0], lat, a=a, cubic=True)
    out = {}
    b = base.repeat(2)
    b.numbers = [aceserver_number(elements[i % len(elements)]) for i in range(len(b))]
    b.rattle(0.05, seed=1)
    out["bulk"] = b
    big = base.repeat(5 if lat == "fcc" else 4)
    big.numbers = [aceserver_number(elements[(3 * i) % len(elements)]) for i in range(len(big))]
    big.rattle(0.04, seed=2)
    out["large"] = big
    c = b.copy()
    c.pbc = False
    c.cell = np.zeros((3, 3))
    out["cluster"] = c
    s = b.copy()
    s.pbc = (True, True, False)
    s.cell[2] *= 2.0
    out["slab"] = s
    return out


def aceserver_number(symbol):
    from ase.data import atomic_numbers
    return atomic_numbers[symbol]


def models(yaces):
    for folder in sorted((ROOT / "models").iterdir()):
        files = sorted(folder.glob(f"{folder.name}.json"))
        if files:
            yield folder.name, files[0]
    for y in yaces:
        yield Path(y).stem, Path(y)


def snapshot(yaces) -> dict[str, np.ndarray]:
    out = {}
    for name, path in models(yaces):
        model = aceserver.load_model(path)
        for sname, atoms in structures(list(model.elements)).items():
            for threads in (1, None):
                key = f"{name}/{sname}/t{threads or 'n'}"
                has = model.committee is not None
                ev = model.evaluate(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc,
                                    committee=has, committee_forces=has, threads=threads)
                out[key + "/energy"] = np.array(ev.energy)
                out[key + "/forces"] = ev.forces
                out[key + "/virial"] = ev.virial
                out[key + "/energies"] = ev.energies
                if ev.energy_committee is not None:
                    out[key + "/energy_committee"] = np.asarray(ev.energy_committee)
                if ev.forces_committee is not None:
                    out[key + "/forces_committee"] = np.asarray(ev.forces_committee)
            if path.suffix == ".json" and sname in ("bulk", "slab"):       # ace1 models: fitting rows
                rows = model.basis_rows(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
                for k, v in enumerate(rows):
                    out[f"{name}/{sname}/rows/{k}"] = np.asarray(v)
        with tempfile.TemporaryDirectory() as tmp:
            if path.suffix == ".yace":
                js = Path(tmp) / "m.json"
                back = Path(tmp) / "back.yace"
                convert(path, js)
                convert(js, back)
                out[f"{name}/convert/json"] = digest(js.read_bytes())
                out[f"{name}/convert/yace"] = digest(back.read_bytes())
            elif name in EXPORTED:
                y = Path(tmp) / "m.yace"
                convert(path, y)
                text = b"\n".join(l for l in y.read_bytes().splitlines()
                                  if b"exported_at" not in l and b"export_seconds" not in l)
                out[f"{name}/convert/export"] = digest(text)
    return out


def convert(src, dst):
    subprocess.run([sys.executable, "-m", "aceserver.cli", "convert", str(src), str(dst)],
                   check=True, capture_output=True)


def digest(data: bytes) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(data).digest(), dtype=np.uint8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("record", "compare"))
    p.add_argument("file")
    p.add_argument("--yace", nargs="*", default=sorted(str(f) for f in (ROOT / "tests" / "data").glob("*.yace")))
    args = p.parse_args(argv)
    now = snapshot(args.yace)
    if args.mode == "record":
        np.savez(args.file, **now)
        print(f"recorded {len(now)} arrays in {args.file}")
        return 0
    with np.load(args.file, allow_pickle=False) as ref:
        before = {k: ref[k] for k in ref.files}
    bad = sorted(set(before) ^ set(now))
    for k in sorted(set(before) & set(now)):
        a, b = before[k], now[k]
        if a.shape != b.shape or a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=True):
            diff = np.max(np.abs(a - b)) if a.shape == b.shape and a.dtype.kind == "f" else "n/a"
            bad.append(f"{k} (max |diff| {diff})")
    print(f"{len(before)} arrays before, {len(now)} now, {len(bad)} differ")
    for k in bad:
        print("  ", k)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
