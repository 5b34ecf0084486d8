"""Assembly on a local Dask cluster (2 worker processes) gives the serial fit's model, also when a
worker is killed mid-assembly; a data error on a worker reaches the user as in a local fit.

The serial fit is the one-thread streaming fit of the same configuration (the in-memory solver's
agreement with the streaming one is test_fit_streaming's subject): here only where the blocks are
computed and in which tree their factors are combined differs.

The reduction gives bitwise the same factors on threads and on Dask workers by construction
(aceserver.fitting.streaming.reduce_configs: single-threaded BLAS per leaf, numbers independent of
thread count and timing), so both fits solve the same reduced system in this process: measured differences 0.0 with 1 and 2 BLAS threads. 1e-10 is therefore no
rounding estimate but a check of that determinism (the lsq_bounds of the BLR fits in
test_fit_streaming are ~7e-8)."""
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from aceserver.fitting.workflow import run_fit
from aceserver.fitting import cluster, data
from aceserver.fitting.config import load_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client
    lc = cluster.local_cluster(2)
    c = Client(lc)
    yield c
    c.close()
    lc.close()


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    cfg = load_config(ROOT / "models/TiAl-tutorial/fit.yaml")
    out = tmp_path_factory.mktemp("serial") / "m.json"
    model, report = run_fit(cfg, output=out, plots=False, progress=False, streaming=True, threads=1,
                            out=open(os.devnull, "w"))
    assert report["assembly"]["path"] == "streaming"
    return model


def _dask_fit(tmp_path, client, on_task=None):
    cfg = load_config(ROOT / "models/TiAl-tutorial/fit.yaml")
    model, report = run_fit(cfg, output=tmp_path / "d.json", plots=False, progress=False, client=client,
                            on_task=on_task, out=open(os.devnull, "w"))
    assert report["assembly"]["path"] == "dask"
    return model


def test_two_workers_give_the_serial_model(serial, client, tmp_path):
    model = _dask_fit(tmp_path, client)
    assert _rel(model.parameters, serial.parameters) < 1e-10
    assert _rel(model.committee, serial.committee) < 1e-10


def test_killed_worker_gives_the_same_model(serial, client, tmp_path):
    before = client.run(os.getpid)
    killed = []

    def kill_one(done, total):
        if not killed:
            assert done < total                     # mid-assembly: tasks are still to run
            addr, pid = sorted(client.run(os.getpid).items())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    model = _dask_fit(tmp_path, client, on_task=kill_one)
    assert killed
    client.wait_for_workers(2, timeout=60)
    after = set(client.run(os.getpid).values())
    assert killed[0] not in after and after != set(before.values())    # a new worker process replaced it
    assert _rel(model.parameters, serial.parameters) < 1e-10
    assert _rel(model.committee, serial.committee) < 1e-10


def test_data_error_on_worker_is_the_local_error(client, tmp_path):
    """A frame with a bad force array: the worker's error names file, frame and field as a local read does."""
    lines = (DATA / "TiAl_tiny.xyz").read_text().splitlines(keepends=True)
    # third frame: the z force on its first atom becomes NaN (columns: species, pos 3, force 3, tags)
    i, frame = 0, 0
    while frame < 2:
        i += int(lines[i]) + 2
        frame += 1
    atom = lines[i + 2].split()
    atom[6] = "nan"
    lines[i + 2] = " ".join(atom) + "\n"
    bad = tmp_path / "bad.xyz"
    bad.write_text("".join(lines))
    keys = data.Keys("energy", "force", "virial")
    with pytest.raises(data.FitDataError) as local:
        data.read_configs(bad, keys, elements=["Ti", "Al"])
    assert "frame 2" in str(local.value) and "force" in str(local.value)
    good = data.read_configs(DATA / "TiAl_tiny.xyz", keys, elements=["Ti", "Al"])
    for c in good:
        c.source = str(bad)                         # the workers read these frames from the bad file
    defn = cluster.model_definition({"elements": ["Ti", "Al"], "order": 2, "totaldegree": 4, "rcut": 5.0},
                                    {"Ti": 0.0, "Al": 0.0})
    reducer = cluster.DaskReducer(client, defn, keys, progress=False)
    with pytest.raises(data.FitDataError) as remote:
        reducer(good)
    assert str(remote.value) == str(local.value)
    assert remote.value.frame == 2 and remote.value.field == "force"


def test_local_fit_imports_no_dask(tmp_path):
    import subprocess
    code = ("import sys; from aceserver.fitting.workflow import run_fit; from aceserver.fitting.config import load_config;"
            f"cfg = load_config({str(ROOT / 'models/Si-tiny/fit.yaml')!r}); cfg.solver = {{'name': 'qr'}};"
            f"run_fit(cfg, output={str(tmp_path / 'm.json')!r}, plots=False, progress=False, streaming=True);"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]; assert not bad, bad")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_force_groups_reach_the_workers(client, tmp_path):
    """Workers read the frames again from the files: the configurations' labels from `force_groups`
    (not in the file) must reach them, so the Dask fit equals the serial one, and both differ from
    the fit that ignores the groups' weights."""
    import re
    import yaml
    (tmp_path / "si.xyz").write_text(re.sub(r" config_type=\S+", "", (DATA / "Si_tiny.xyz").read_text()))

    def cfg(weights):
        raw = {"model": {"elements": ["Si"], "order": 3, "totaldegree": 8, "rcut": 5.5}, "E0": {"Si": -158.54496821},
               "data": {"train": "si.xyz", "energy_key": "dft_energy", "force_key": "dft_force",
                        "virial_key": "dft_virial", "force_groups": 3},
               "weights": weights, "prior": {"name": "algebraic", "p": 4}, "solver": {"name": "qr", "lambda": 1e-3},
               "output": {"plots": None, "active_set": False}}
        (tmp_path / "fit.yaml").write_text(yaml.safe_dump(raw))
        return load_config(tmp_path / "fit.yaml")
    weighted = {"default": {"E": 30}, "rms0": {"E": 30, "F": 3.0}, "rms2": {"E": 30, "F": 0.3}}
    quiet = open(os.devnull, "w")
    serial, _ = run_fit(cfg(weighted), output=tmp_path / "s.json", plots=False, progress=False, streaming=True,
                        threads=1, out=quiet)
    remote, report = run_fit(cfg(weighted), output=tmp_path / "d.json", plots=False, progress=False, client=client,
                             out=quiet)
    assert report["assembly"]["path"] == "dask"
    plain, _ = run_fit(cfg({"default": {"E": 30}}), output=tmp_path / "p.json", plots=False, progress=False,
                       client=client, out=quiet)
    assert _rel(remote.parameters, serial.parameters) < 1e-10
    assert _rel(plain.parameters, serial.parameters) > 1e-3
