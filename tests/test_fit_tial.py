"""TiAl tutorial fit with the ACE basis: error table, and fit → save → load → eval gives identical errors."""
import argparse
import io
import json
from pathlib import Path

import pytest

from aceserver.commands import eval as eval_cmd
from aceserver.fitting.workflow import run_fit
from aceserver.fitting.config import parse_config

DATA = Path(__file__).parent / "data"


pytestmark = pytest.mark.slow


def test_tial_fit_save_load_eval(tmp_path, capsys):
    raw = {
        "name": "TiAl-tutorial",
        "model": {"elements": ["Ti", "Al"], "order": 3, "totaldegree": 6, "rcut": 5.5},
        "E0": {"Ti": -1586.0195, "Al": -105.5954},
        "data": {"train": str(DATA / "TiAl_tutorial.xyz"), "energy_key": "energy", "force_key": "force",
                 "virial_key": "virial"},
        "weights": {"FLD_TiAl": {"E": 60.0, "F": 1.0, "V": 1.0}, "TiAl_T5000": {"E": 5.0, "F": 1.0, "V": 1.0}},
        "solver": {"name": "blr", "committee_size": 4},
        "output": {"model": str(tmp_path / "tial.json"), "plots": str(tmp_path / "plots")},
    }
    cfg = parse_config(raw, tmp_path)
    out = io.StringIO()
    model, report = run_fit(cfg, progress=False, out=out)
    text = out.getvalue()
    print(text)
    assert "FLD_TiAl" in text and "TiAl_T5000" in text and "set" in text
    train = report["errors"]["train"]
    # a sane fit: a few meV/atom, a few tenths of eV/Å at most
    assert train["rmse"]["set"]["E"] < 0.02 and train["rmse"]["set"]["F"] < 0.5
    assert (tmp_path / "plots/parity_forces.png").exists()

    p = argparse.ArgumentParser()
    eval_cmd.add_arguments(p)
    capsys.readouterr()
    rc = eval_cmd.run(p.parse_args([str(tmp_path / "tial.json"), str(DATA / "TiAl_tutorial.xyz"), "--json"]))
    assert rc == 0
    js = json.loads(capsys.readouterr().out)
    # the fit wrote the model's active set (output.active_set defaults to true), so eval also
    # reports γ; on the training data itself every atom interpolates (MaxVol's tol 1e-9, plus
    # the rounding of b A⁻¹, a few 1e-8 at κ(A_s) ≈ 1e8 of this basis)
    gamma = js.pop("gamma")
    assert set(gamma["species"]) == {"Ti", "Al"}
    assert max(s["max"] for s in gamma["species"].values()) <= 1 + 1e-6
    assert js == train
    import aceserver
    loaded = aceserver.load_model(str(tmp_path / "tial.json"))
    assert loaded.metadata["fit"]["errors"]["train"] == train
    assert loaded.committee.shape == (4, loaded.length_basis)
