"""Export -> re-import: `aceserver convert model.json out.yace`, then our own .yace reader, gives
our numbers back: E0 exactly, the rest to the documented accuracy of the radial fits
(docs/lammps-export.md: energies 1e-6 eV/atom, forces 2e-4 eV/Å for Si-tiny, 2e-5 for TiAl)."""
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

import aceserver
from aceserver.cli import main as cli

MODELS = Path(__file__).resolve().parents[1] / "models"


def _structures(symbols):
    a = bulk(symbols[0], "diamond" if symbols == ["Si"] else "fcc",
             a=5.43 if symbols == ["Si"] else 4.0, cubic=True).repeat(2)
    if len(symbols) > 1:
        a.symbols[::2] = symbols[1]
    out = []
    for k, scale in enumerate((0.97, 1.0, 1.04)):
        b = a.copy()
        b.set_cell(b.cell * scale, scale_atoms=True)
        b.rattle(0.05, seed=k)
        out.append(b)
    return out


@pytest.mark.parametrize("name,symbols,tol_f", [("Si-tiny", ["Si"], 2e-4),
                                                ("TiAl-tutorial", ["Ti", "Al"], 2e-5)])
def test_exported_file_reimports_to_our_numbers(tmp_path, name, symbols, tol_f):
    src = MODELS / name / f"{name}.json"
    out = tmp_path / f"{name}.yace"
    assert cli(["convert", str(src), str(out)]) == 0
    ours, back = aceserver.load_model(src), aceserver.load_model(out)
    assert back.info()["format"] == "yace"
    for el in symbols:          # isolated atom: only E0, which is exact
        iso = Atoms(el, positions=[[0, 0, 0]])
        e_ours = ours.evaluate(iso.numbers, iso.positions).energy
        e_back = back.evaluate(iso.numbers, iso.positions).energy
        assert e_back == pytest.approx(e_ours, abs=1e-12)
    for at in _structures(symbols):
        r0 = ours.evaluate(at.numbers, at.positions, at.cell[:], at.pbc)
        r1 = back.evaluate(at.numbers, at.positions, at.cell[:], at.pbc)
        assert abs(r1.energy - r0.energy) / len(at) < 1e-6
        assert np.abs(r1.forces - r0.forces).max() < tol_f
        np.testing.assert_allclose(r1.energies, r0.energies, atol=1e-5)


def test_convert_refuses_existing_output_and_unknown_suffix(tmp_path):
    src = MODELS / "Si-tiny" / "Si-tiny.json"
    assert cli(["convert", str(src), str(tmp_path / "x.txt")]) == 2
    existing = tmp_path / "x.yace"
    existing.write_text("keep")
    assert cli(["convert", str(src), str(existing)]) == 2
    assert existing.read_text() == "keep"
