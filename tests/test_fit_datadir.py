"""Fit configurations that name their data relative to a data directory (--data-dir / $ACESERVER_DATA)."""
import argparse
import json
import shutil
from pathlib import Path

import pytest

from aceserver.commands import fit as fit_cmd
from aceserver.fitting.config import FitConfigError, load_config
from aceserver.fitting.workflow import sha256_file

DATA = Path(__file__).parent / "data"
YAML = """
model: {elements: [Si], order: 2, totaldegree: 6, rcut: 5.0}
E0: {Si: -158.54496821}
data:
  relative_to: data_dir
  train: sets/Si_tiny.xyz
  source: ACEData repository, trainingsets/Si_tiny.tar.gz
  energy_key: dft_energy
  force_key: dft_force
  virial_key: dft_virial
solver: {name: blr}
output: {model: si.json, plots: null}
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.delenv("ACESERVER_DATA", raising=False)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "fit.yaml").write_text(YAML)
    (tmp_path / "data" / "sets").mkdir(parents=True)
    shutil.copy(DATA / "Si_tiny.xyz", tmp_path / "data" / "sets" / "Si_tiny.xyz")
    return tmp_path


def test_data_dir_from_option_or_environment(setup, monkeypatch):
    cfg = load_config(setup / "cfg" / "fit.yaml", data_dir=setup / "data")
    assert cfg.train == [(setup / "data" / "sets" / "Si_tiny.xyz").resolve()]
    monkeypatch.setenv("ACESERVER_DATA", str(setup / "data"))
    assert load_config(setup / "cfg" / "fit.yaml").train == cfg.train
    assert load_config(setup / "cfg" / "fit.yaml", data_dir=setup / "data").train == cfg.train


def test_missing_data_dir_or_file_names_the_file_and_its_source(setup):
    with pytest.raises(FitConfigError, match="--data-dir.*ACESERVER_DATA.*Si_tiny.tar.gz"):
        load_config(setup / "cfg" / "fit.yaml")
    (setup / "empty").mkdir()
    with pytest.raises(FitConfigError, match=r"sets/Si_tiny.xyz not found.*get it from: ACEData"):
        load_config(setup / "cfg" / "fit.yaml", data_dir=setup / "empty")
    with pytest.raises(FitConfigError, match="does not exist"):
        load_config(setup / "cfg" / "fit.yaml", data_dir=setup / "nowhere")


def test_cli_fit_records_data_by_name_and_sha256_only(setup, capsys, monkeypatch):
    args = argparse.Namespace(config=str(setup / "cfg" / "fit.yaml"), json_report=None, output=None, threads=1,
                              no_plots=True, quiet=True, data_dir=str(setup / "data"))
    # the command line as typed, with absolute paths: the model file records it without them
    monkeypatch.setattr("sys.argv", ["aceserver", "fit", args.config, "--data-dir", args.data_dir,
                                     f"--json-report={setup / 'r.json'}"])
    assert fit_cmd.run(args) == 0
    text = (setup / "cfg" / "si.json").read_text()
    meta = json.loads(text)
    assert str(setup) not in text                                     # no path of this machine
    assert _find(meta, "provenance")["command"] == "aceserver fit .../fit.yaml --data-dir .../data --json-report=.../r.json"
    data = _find(meta, "provenance")["data"]
    assert data == [{"file": "Si_tiny.xyz", "sha256": sha256_file(DATA / "Si_tiny.xyz")}]
    args.data_dir = None
    assert fit_cmd.run(args) == 2
    assert "--data-dir" in capsys.readouterr().err


def _find(obj, key):
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            r = _find(v, key)
            if r is not None:
                return r
    return None
