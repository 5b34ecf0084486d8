"""Basis sizes and construction rules against ace-spec §1.8-1.10 and §9.3."""
import json
import subprocess
import sys

import pytest

from aceserver.basis.ace1 import build_ace1_basis
from aceserver.basis.spec import LevelRule


@pytest.mark.parametrize("elements, order, totaldegree, expected", [
    (["Si"], 3, 10, 120),             # confirmed upstream (the "77" was a bug)
    (["Si"], 3, 12, 223),
    (["Si"], 3, 8, 62),
    (["Cu"], 3, [16, 12, 8], 122),
    (["Cu"], 3, [20, 16, 12], 319),
    (["Cu"], 3, [25, 21, 17], 1041),
    (["Mo"], 3, [28, 24, 20], 2029),
    (["Ti", "Al"], 3, 8, 648),
    (["Ti", "Al"], 3, 6, 270),
])
def test_length_basis(elements, order, totaldegree, expected):
    assert build_ace1_basis(elements, order, totaldegree).length_basis == expected


def test_si_td12_counts_match_upstream_work_estimate():
    b = build_ace1_basis(["Si"], 3, 12, rcut=5.5)
    # ace-spec and issue 3: 75 one-particle functions (l <= 3), 596 products, 211 B + 12 pair
    assert len(b.a_spec) == 75 and b.lmax == 3
    assert len(b.aa_spec) == 596
    assert (b.n_b, b.n_pair) == (211, 12)


def test_level_uses_upstream_float_arithmetic():
    lev = LevelRule(nz=1, wL=1.5)
    # l/(1/1.5) is 1.5000000000000002 * l in floats for some l; upstream compares exactly this
    assert lev(9, 2) == 9 + 2 / (1 / 1.5)
    assert lev.of_list([(1, 1), (2, 1)]) == (1 + 1 / (1 / 1.5)) + (2 + 1 / (1 / 1.5))


def test_default_cutoff_and_r0_from_bond_lengths():
    b = build_ace1_basis(["Ti", "Al"], 2, 4)
    assert b.rcut == pytest.approx(2.5 * 2.9)            # Ti 2.9, Al 2.9 Å
    b = build_ace1_basis(["Si"], 2, 4)
    assert b.rcut == pytest.approx(6.0)
    assert b.mb_transform[0, 0, 3] == pytest.approx(2.4)  # r0 of Si-Si


def test_unsupported_keywords_are_refused():
    with pytest.raises(ValueError, match="pure2b"):
        build_ace1_basis(["Si"], 2, 4, pure2b=True)
    with pytest.raises(TypeError, match="unknown"):
        build_ace1_basis(["Si"], 2, 4, not_a_keyword=1)
    with pytest.raises(ValueError, match="no default bond length|unknown element"):
        build_ace1_basis(["Xx"], 2, 4)


def test_cli_basis_json():
    out = subprocess.run([sys.executable, "-m", "aceserver.cli", "basis", "--elements", "Si",
                          "--order", "3", "--totaldegree", "10", "--rcut", "5.5", "--json"],
                         capture_output=True, text=True, check=True)
    d = json.loads(out.stdout)
    assert d["length_basis"] == 120 and d["n_manybody"] == 110 and d["n_pair"] == 10
    assert d["rcut"] == 5.5 and d["n_A"] > 0 and d["n_AA"] > 0 and d["build_seconds"] >= 0


def test_cli_basis_one_level_per_order():
    out = subprocess.run([sys.executable, "-m", "aceserver.cli", "basis", "--elements", "Si",
                          "--order", "3", "--totaldegree", "20", "16", "12", "--json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["length_basis"] == 319
