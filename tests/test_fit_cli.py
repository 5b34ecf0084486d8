"""`aceserver fit` / `aceserver eval` end to end on the toy pair model (config parsing, outputs, round trip)."""
import argparse
import json

import numpy as np
import pytest
import yaml
from ase import Atoms
from ase.io import write

from aceserver.commands import eval as eval_cmd
from aceserver.commands import fit as fit_cmd
from aceserver.fitting import config as fconfig
from fit_toy_model import ToyModel, synthetic_configs

THETA = np.array([0.3, -1.2, 2.0, 0.5])


@pytest.fixture()
def toy_env(tmp_path, monkeypatch):
    monkeypatch.setattr(fconfig, "build_model",
                        lambda kw, E0: ToyModel(kw["elements"], nfun=kw.get("nfun", 4), rcut=kw.get("rcut", 4.0), E0=E0))
    monkeypatch.setattr(fconfig, "load_model_file", ToyModel.load)
    model = ToyModel(["Cu"], nfun=4, rcut=4.0, E0={"Cu": -3.0})
    frames = []
    rng = np.random.default_rng(0)
    for c in synthetic_configs(model, THETA, n=10, seed=2, E0={"Cu": -3.0}):
        a = Atoms(numbers=c.numbers, positions=c.positions, cell=c.cell, pbc=c.pbc)
        a.info["REF_energy"] = c.energy + 1e-3 * rng.standard_normal() * c.natoms
        a.info["config_type"] = c.config_type
        a.info["ref_virial"] = c.virial.ravel()
        a.arrays["ref_force"] = c.forces + 1e-3 * rng.standard_normal(c.forces.shape)
        frames.append(a)
    iso = Atoms("Cu", positions=[[5, 5, 5]], cell=[10, 10, 10], pbc=True)
    iso.info["REF_energy"] = -3.0
    iso.info["config_type"] = "isolated_atom"
    frames.append(iso)
    write(tmp_path / "train.xyz", frames, format="extxyz")
    cfg = {
        "name": "toy",
        "model": {"elements": ["Cu"], "nfun": 4, "rcut": 4.0},
        "E0": "isolated_atom",
        "data": {"train": "train.xyz", "energy_key": "ref_energy", "force_key": "REF_FORCE", "virial_key": "ref_virial"},
        "weights": {"default": {"E": 30, "F": 1, "V": 1}, "a": {"E": 10}},
        "prior": {"name": "algebraic", "p": 4},
        "solver": {"name": "blr", "committee_size": 4},
        "validation_fraction": 0.2,
        "seed": 1,
        "output": {"model": "out/toy.json", "plots": "out/plots"},
    }
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path


def _args(module, argv):
    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p.parse_args(argv)


def test_fit_then_eval_round_trip(toy_env, capsys):
    rep = toy_env / "report.json"
    rc = fit_cmd.run(_args(fit_cmd, [str(toy_env / "fit.yaml"), "--json-report", str(rep), "--quiet"]))
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "training errors" in out and "validation errors" in out and "meV/atom" in out
    report = json.loads(rep.read_text())
    assert report["solver"]["solver"] == "blr" and report["solver"]["committee_size"] == 4
    assert (toy_env / "out/plots/parity_energy.png").stat().st_size > 1000
    assert (toy_env / "out/plots/parity_forces.png").exists()
    model = ToyModel.load(toy_env / "out/toy.json")
    # statistical, not rounding: the seeded 1e-3 noise of the targets moves the BLR fit of θ by up to
    # 0.055 (measured); rounding moves it by ~1e-11 on any CPU
    np.testing.assert_allclose(model.parameters, THETA, rtol=0.05, atol=0.05)
    assert model.committee.shape == (4, 4)
    assert model.E0 == {"Cu": -3.0}
    fit_meta = model.metadata["fit"]
    assert fit_meta["provenance"]["data"][0]["sha256"]
    assert fit_meta["weights"]["a"] == {"E": 10.0, "F": 1.0, "V": 1.0}

    # eval on the training file prints the same table; --json has the documented shape
    rc = eval_cmd.run(_args(eval_cmd, [str(toy_env / "out/toy.json"), str(toy_env / "train.xyz"),
                                       "--energy-key", "ref_energy", "--force-key", "ref_force",
                                       "--virial-key", "ref_virial", "--json"]))
    assert rc == 0
    js = json.loads(capsys.readouterr().out)
    assert set(js) == {"rmse", "mae"}
    assert set(js["rmse"]["set"]) == {"E", "F", "V"}
    assert js["rmse"]["isolated_atom"]["E"] == 0.0 and js["rmse"]["isolated_atom"]["V"] is None
    # the same errors as the fit's, on the same configurations (train + validation = whole file)
    tr = fit_meta["errors"]["train"]["rmse"]
    for ct in ("isolated_atom",):
        assert js["rmse"][ct] == tr[ct]


def test_fit_eval_identical_on_same_data(toy_env, capsys):
    cfg = yaml.safe_load((toy_env / "fit.yaml").read_text())
    cfg["validation_fraction"] = 0.0
    (toy_env / "fit.yaml").write_text(yaml.safe_dump(cfg))
    assert fit_cmd.run(_args(fit_cmd, [str(toy_env / "fit.yaml"), "--quiet", "--no-plots"])) == 0
    capsys.readouterr()
    model = ToyModel.load(toy_env / "out/toy.json")
    assert eval_cmd.run(_args(eval_cmd, [str(toy_env / "out/toy.json"), str(toy_env / "train.xyz"),
                                         "--energy-key", "ref_energy", "--force-key", "ref_force",
                                         "--virial-key", "ref_virial", "--json"])) == 0
    js = json.loads(capsys.readouterr().out)
    assert js == model.metadata["fit"]["errors"]["train"]


def test_bad_config_is_a_clear_error(toy_env, capsys):
    cfg = yaml.safe_load((toy_env / "fit.yaml").read_text())
    cfg["solvr"] = "qr"
    (toy_env / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert fit_cmd.run(_args(fit_cmd, [str(toy_env / "bad.yaml")])) == 2
    assert "unknown entry ['solvr']" in capsys.readouterr().err
    cfg.pop("solvr")
    cfg["data"]["train"] = "missing.xyz"
    (toy_env / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert fit_cmd.run(_args(fit_cmd, [str(toy_env / "bad.yaml")])) == 2
    assert "missing.xyz" in capsys.readouterr().err
