"""Training-data reading: keys, stress → virial, weights, E0, malformed data, priors."""
from pathlib import Path

import numpy as np
import pytest

from aceserver.fitting import data, priors
from aceserver.fitting.data import FitDataError, Keys

DATA = Path(__file__).parent / "data"
SI_KEYS = Keys(energy="dft_energy", force="dft_force", virial="dft_virial")


def test_read_si_tiny():
    cs = data.read_configs(DATA / "Si_tiny.xyz", SI_KEYS, elements=["Si"])
    assert len(cs) == 53
    assert sum(c.natoms for c in cs) == 229
    types = [c.config_type for c in cs]
    assert types.count("dia") == 25 and types.count("bt") == 25 and types.count("liq") == 2
    iso = cs[0]
    assert iso.config_type == "isolated_atom" and iso.virial is None
    assert iso.energy == pytest.approx(-158.54496821)
    c = cs[1]
    assert c.forces.shape == (c.natoms, 3) and c.virial.shape == (3, 3)
    np.testing.assert_allclose(c.virial, c.virial.T)
    assert c.energy == pytest.approx(-326.237661)
    assert c.frame == 1 and c.source.endswith("Si_tiny.xyz")


def test_keys_case_insensitive_and_calc_results():
    # TiAl uses "energy" (moved by ASE into a calculator), "force" (array), "virial" (info)
    cs = data.read_configs(DATA / "TiAl_tutorial.xyz", Keys(energy="ENERGY", force="Force", virial="Virial"),
                           index="0:3")
    assert len(cs) == 3
    assert cs[0].energy == pytest.approx(-1703.64063822)
    assert cs[0].forces.shape == (cs[0].natoms, 3)
    assert cs[0].virial[0, 0] == pytest.approx(5.072173561696366)
    assert cs[0].config_type == "FLD_TiAl"


def _write(tmp_path, text, name="x.xyz"):
    p = tmp_path / name
    p.write_text(text)
    return p


FRAME = """2
Lattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3:frc:R:3 E=-3.5 {extra} pbc="T T T"
Si 0 0 0 0.1 0.2 0.3
Si 1.2 1.3 1.1 -0.1 -0.2 -0.3
"""


def test_stress_converted_to_virial_and_missing_keys(tmp_path):
    s = "0.1 0.2 0.3 0.04 0.05 0.06"
    p = _write(tmp_path, FRAME.format(extra=f'my_stress="{s}"'))
    (c,) = data.read_configs(p, Keys(energy="e", force="frc", virial="virial", stress="my_stress"))
    sigma = np.array([[0.1, 0.06, 0.05], [0.06, 0.2, 0.04], [0.05, 0.04, 0.3]])
    np.testing.assert_allclose(c.virial, -125.0 * sigma)
    assert c.energy == -3.5
    (c,) = data.read_configs(p, Keys(energy="nope", force="frc", virial="virial"))
    assert c.energy is None and c.virial is None and c.forces is not None
    assert c.config_type == "default"


def test_malformed_data_names_file_frame_field(tmp_path):
    p = _write(tmp_path, FRAME.format(extra='vir="1 2 3 4"'))
    with pytest.raises(FitDataError, match=r"x\.xyz.*frame 0.*'vir'"):
        data.read_configs(p, Keys(energy="E", force="frc", virial="vir"))
    # a frame that ASE itself cannot parse: file and frame are named
    p = _write(tmp_path, FRAME.format(extra="") + FRAME.format(extra='virial="1 2 3 4"'))
    with pytest.raises(FitDataError, match=r"x\.xyz, frame 1.*virial"):
        data.read_configs(p, Keys(energy="E", force="frc", virial="virial"))
    p = _write(tmp_path, FRAME.format(extra="") + FRAME.format(extra="").replace("0.1 0.2 0.3", "nan 0.2 0.3"))
    with pytest.raises(FitDataError, match=r"frame 1.*'frc'.*NaN"):
        data.read_configs(p, Keys(energy="E", force="frc"))
    p = _write(tmp_path, FRAME.format(extra=""))
    with pytest.raises(FitDataError, match=r"frame 0.*'numbers'.*Si is not in"):
        data.read_configs(p, Keys(energy="E", force="frc"), elements=["Ge"])
    with pytest.raises(FitDataError, match="no such file"):
        data.read_configs(tmp_path / "missing.xyz")


def test_weights_defaults_and_validation():
    w = data.normalise_weights(None)
    assert data.config_weights("anything", w) == {"E": 30.0, "F": 1.0, "V": 1.0}
    w = data.normalise_weights({"liq": {"E": 10, "F": 0.66, "V": 0.25}})
    assert data.config_weights("LIQ", w)["V"] == 0.25
    assert data.config_weights("dia", w) == {"E": 1.0, "F": 1.0, "V": 1.0}   # no default entry
    with pytest.raises(ValueError, match="unknown observation"):
        data.normalise_weights({"default": {"Q": 1}})
    with pytest.raises(ValueError, match=">= 0"):
        data.normalise_weights({"default": {"E": -1}})


def test_E0_explicit_or_isolated():
    cs = data.read_configs(DATA / "Si_tiny.xyz", SI_KEYS)
    assert data.resolve_E0("isolated_atom", ["Si"], cs) == {"Si": pytest.approx(-158.54496821)}
    assert data.resolve_E0({"Si": -1.0}, ["Si"], cs) == {"Si": -1.0}
    with pytest.raises(ValueError, match="no E0 for Ge"):
        data.resolve_E0("isolated_atom", ["Si", "Ge"], cs)
    with pytest.raises(ValueError, match="not in the model"):
        data.resolve_E0({"C": 1.0}, ["Si"], cs)
    assert data.resolve_E0(None, ["Ge"], cs) == {"Ge": 0.0}


def test_split_is_seeded_and_keeps_isolated_atoms():
    cs = data.read_configs(DATA / "Si_tiny.xyz", SI_KEYS)
    tr, va = data.split_train_validation(cs, 0.2, seed=5)
    tr2, va2 = data.split_train_validation(cs, 0.2, seed=5)
    assert [c.frame for c in va] == [c.frame for c in va2]
    assert len(va) == round(0.2 * 52) and len(tr) + len(va) == 53
    assert any(c.config_type == "isolated_atom" for c in tr)


def test_priors_formulas():
    labels = [[(1, 0)], [(2, 1), (1, 1)], [(3, 2), (1, 0), (2, 2)]]
    g = priors.make_prior(labels)   # algebraic p = 4, wl = 2/3, wn = 1
    assert g[0] == pytest.approx(1.0)
    assert g[1] == pytest.approx(1.5 ** 4 + 2 ** 4 + 1.5 ** 4 + 1)
    assert g[2] == pytest.approx(3 ** 4 + 3 ** 4 + 1 + 2 ** 4 + 3 ** 4)
    ge = priors.make_prior(labels, {"name": "exponential"})
    assert ge[1] == pytest.approx(np.exp(1.5 + 2 + 1.5 + 1))
    gg = priors.make_prior(labels, "gaussian")
    assert gg[2] == pytest.approx(np.exp(2 * (4 + 9) + 2 * 1 + 2 * (4 + 4)))
    g2 = priors.make_prior(labels, {"name": "algebraic", "p": 2})
    assert g2[1] == pytest.approx(1.5 ** 2 + 4 + 1.5 ** 2 + 1)
    assert (priors.make_prior(labels, "none") == 1).all()
    with pytest.raises(ValueError, match="unknown prior"):
        priors.make_prior(labels, "smooth")
