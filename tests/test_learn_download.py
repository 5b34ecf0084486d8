"""The learning service's data, downloaded (`GET /v1/models/{name}/data/configurations`,
`aceclient.ACELearning.download`, `aceserver.learning.export`).

* against a real `aceserver serve --learn` (the incremental fitter): three posts, the second refused
  by the fitter (an isolated atom whose energy contradicts the fit's E0), downloaded as extended XYZ
  and msgpack and read back with `ase.io.read` and `msgpack.Unpacker`: every number equals the
  posted label BIT FOR BIT in both forms (the posted labels are float64 sent raw as msgpack; the
  extxyz form writes 17 significant digits, which read back to the same float64), versions and
  statuses (fitted, refused with its reason) are right; since/until select versions; bad parameters
  are 4xx with the error document; no path of the server's directories is in any reply; a row
  modified behind the server's back cuts the reply short and the client raises (no file left);
* the log is read a page of rows at a time (`DataLog.configs`): after the first record only one
  page has been queried, a batch appended while a reader is half-way is read after the others (the
  lock is not held between pages), and a modified row fails its batch's sha256 check;
* the statuses of `export.status`, pending included; the route's body is those records, joined into
  chunks of about `CHUNK` bytes.
"""
from __future__ import annotations

import dataclasses
import io
import sqlite3
import types

import httpx
import msgpack
import numpy as np
import pytest
from ase import Atoms
from ase.io import read as ase_read

from aceclient import ACELearning, ACEServerConnectionError, InvalidInputError
from aceserver.fitting import incremental
from aceserver.fitting.data import Config
from aceserver.learning import DataLog, DataLogError, export
from aceserver.serving.http.routers import learn as learn_router

from _http_support import Server
from _learn_support import structure_doc
from test_fit_incremental import E0_SI, fit_config, read

pytestmark = pytest.mark.timeout(900)
SOLVER = {"name": "qr", "lambda": 1.0}
TOKEN = "download-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROUTE = "/v1/models/si/data/configurations"


def _atoms(c: Config) -> Atoms:
    """Labels in info/arrays (not a calculator): the client sends the virial itself, raw float64."""
    atoms = Atoms(numbers=c.numbers, positions=c.positions, cell=c.cell, pbc=c.pbc)
    atoms.info["energy"] = c.energy
    atoms.arrays["forces"] = c.forces
    if c.virial is not None:
        atoms.info["virial"] = c.virial
    return atoms


def _jitter(c: Config, seed: int) -> Config:
    """A copy whose coordinates and labels need all 17 digits (the file's have about 8 decimals, which a
    rounding writer would keep exact)."""
    rng = np.random.default_rng(seed)
    jiggle = lambda a: None if a is None else a + 1e-7 * rng.normal(size=a.shape)   # noqa: E731
    return dataclasses.replace(c, positions=jiggle(c.positions), forces=jiggle(c.forces), virial=jiggle(c.virial),
                               energy=c.energy + 1e-7 * rng.normal())


def _same(got: dict, c: Config) -> None:
    """Every number of a downloaded configuration equals the posted one, bit for bit."""
    assert got["energy"] == c.energy
    for key in ("numbers", "positions", "cell", "forces", "pbc"):
        assert np.array_equal(np.asarray(got[key]), getattr(c, key)), key
    if c.virial is None:
        assert got["virial"] is None
    else:
        assert np.array_equal(got["virial"], c.virial)


def _from_xyz(a: Atoms) -> dict:
    return {"energy": a.get_potential_energy(), "numbers": a.numbers, "positions": a.positions,
            "cell": a.cell.array, "forces": a.get_forces(), "pbc": a.pbc, "virial": a.info.get("virial")}


def _unpack(data: bytes) -> list:
    def arrays(obj):
        if obj.keys() == {"dtype", "shape", "data"}:
            return np.frombuffer(obj["data"], dtype=obj["dtype"]).reshape(obj["shape"])
        return obj
    return list(msgpack.Unpacker(io.BytesIO(data), raw=False, object_hook=arrays))


def test_download_from_a_learning_server(tmp_path):
    cfg = fit_config(tmp_path, SOLVER)                       # E0 from the isolated atom of the data
    incremental.fit_with_state(cfg, plots=False, progress=False, threads=2, out=io.StringIO())
    new = [_jitter(c, k) for k, c in enumerate(read(tmp_path / "new.xyz"))]
    assert any(c.virial is not None for c in new[:2] + new[3:5])
    atom = {"numbers": [14], "positions": [[10.0, 10.0, 10.0]], "cell": [[20.0, 0, 0], [0, 20.0, 0], [0, 0, 20.0]],
            "pbc": True, "energy": E0_SI + 1.0, "forces": [[0.0, 0.0, 0.0]], "config_type": "isolated_atom"}
    refused = [Config(numbers=np.array([14]), positions=np.array([[10.0, 10.0, 10.0]]), cell=20.0 * np.eye(3),
                      pbc=np.ones(3, bool), energy=E0_SI + 1.0, forces=np.zeros((1, 3)), config_type="isolated_atom"),
               new[2]]
    posted = {2: new[:2], 3: refused, 4: new[3:5]}
    (tmp_path / "token").write_text(TOKEN)
    learn_dir = tmp_path / "learn"
    args = [f"si={cfg.output_model}", "--learn", "si", "--learn-dir", str(learn_dir),
            "--token-file", str(tmp_path / "token")]
    with Server(args) as server, ACELearning(server.url, token=TOKEN) as learn:
        assert learn.post("si", [_atoms(c) for c in posted[2]], config_type="first")["version"] == 2
        r = httpx.post(f"{server.url}/v1/models/si/data", headers=AUTH, timeout=60,
                       json={"structures": [atom, structure_doc(new[2])]})
        assert r.status_code == 202 and r.json()["version"] == 3, r.text
        assert learn.post("si", [_atoms(c) for c in posted[4]], config_type="third")["version"] == 4
        status = learn.wait("si", 4, timeout=300)
        assert [x["version"] for x in status["refused"]] == [3] and status["pending"] == []

        xyz, mp = tmp_path / "posted.xyz", io.BytesIO()
        assert learn.download("si", xyz) == xyz.stat().st_size
        learn.download("si", mp, format="msgpack")
        part = httpx.get(f"{server.url}{ROUTE}?format=msgpack&since=2&until=3", headers=AUTH, timeout=60)
        tail = httpx.get(f"{server.url}{ROUTE}?since=3", headers=AUTH, timeout=60)
        bad = {q: httpx.get(f"{server.url}{ROUTE}?{q}", headers=AUTH, timeout=60)
               for q in ("format=xyz", "since=-1", "until=0", "since=3&until=3", "since=x")}
        unauthorised = httpx.get(f"{server.url}{ROUTE}", timeout=60)
        unknown = httpx.get(f"{server.url}/v1/models/nope/data/configurations", headers=AUTH, timeout=60)
        with pytest.raises(InvalidInputError, match="format"):        # the client raises the error document
            learn.download("si", tmp_path / "bad.xyz", format="xyz")
        assert not list(tmp_path.glob("bad.xyz*"))                     # and leaves no file
        spec = httpx.get(f"{server.url}/openapi.json", headers=AUTH, timeout=60).json()
        # a row modified behind the server's back: the reply is cut at that batch, and the client raises
        with sqlite3.connect(learn_dir / "learning.sqlite") as db:
            db.execute("UPDATE configs SET energy = energy + 1 WHERE version = 4 AND idx = 1")
        with pytest.raises(ACEServerConnectionError, match="cut short"):
            learn.download("si", tmp_path / "cut.xyz")
        assert not list(tmp_path.glob("cut.xyz*"))
        assert "data version 4 of model 'si' fails its sha256 check" in server.output()
    route = spec["paths"]["/v1/models/{name}/data/configurations"]["get"]
    assert {p["name"] for p in route["parameters"]} >= {"name", "format", "since", "until"}
    assert set(route["responses"]["200"]["content"]) == {"chemical/x-extxyz", "application/msgpack"}
    for unit in ("Å", "eV", "eV/Å", "W = -V·σ", "17 significant digits", "pending", "refused"):
        assert unit in route["description"], unit
    expected = [(v, k, c) for v, cs in posted.items() for k, c in enumerate(cs)]

    frames = ase_read(str(xyz), ":", format="extxyz")
    assert [(a.info["data_version"], a.info["status"]) for a in frames] == \
        [(2, "fitted"), (2, "fitted"), (3, "refused"), (3, "refused"), (4, "fitted"), (4, "fitted")]
    assert [a.info["config_type"] for a in frames] == \
        ["first", "first", "isolated_atom", new[2].config_type, "third", "third"]
    assert all("isolated-atom energies" in a.info["refused_reason"] for a in frames[2:4])
    assert all("refused_reason" not in a.info for a in frames[:2] + frames[4:])
    for a, (_, _, c) in zip(frames, expected):
        _same(_from_xyz(a), c)

    head, *records = _unpack(mp.getvalue())
    assert head["format"] == export.FORMAT_ID and head["units"]["forces"] == "eV/Å"
    assert [(d["version"], d["index"], d["status"]) for d in records] == \
        [(v, k, "refused" if v == 3 else "fitted") for v, k, _ in expected]
    assert records[2]["reason"] == frames[2].info["refused_reason"] and records[0]["reason"] is None
    for d, (_, _, c) in zip(records, expected):
        _same(d, c)

    assert part.status_code == 200 and part.headers["content-type"].startswith("application/msgpack")
    assert [(d["version"], d["index"]) for d in _unpack(part.content)[1:]] == [(3, 0), (3, 1)]
    assert [a.info["data_version"] for a in ase_read(io.StringIO(tail.text), ":", format="extxyz")] == [4, 4]
    for q, r in bad.items():
        assert r.status_code in (400, 422) and r.json()["kind"] == "invalid_input", (q, r.text)
        assert r.json()["field"].split(".")[-1] in q, (q, r.json())
    assert bad["since=3&until=3"].status_code == 400
    assert unauthorised.status_code == 401 and unknown.status_code == 404
    for body in (xyz.read_bytes(), mp.getvalue(), part.content, tail.content, *(r.content for r in bad.values())):
        assert str(tmp_path).encode() not in body and b"learning.sqlite" not in body


def _config(k: int, n: int = 3) -> Config:
    rng = np.random.default_rng(k)
    return Config(numbers=np.full(n, 14), positions=rng.normal(size=(n, 3)), cell=5.0 * np.eye(3),
                  pbc=np.ones(3, bool), energy=float(rng.normal()), forces=rng.normal(size=(n, 3)),
                  virial=rng.normal(size=(3, 3)) if k % 2 else None, config_type=f"t{k}")


def test_the_log_is_read_a_page_at_a_time(tmp_path, monkeypatch):
    log = DataLog(tmp_path)
    batches = [[_config(10 * b + i) for i in range(3)] for b in range(4)]
    for b in batches:
        log.append("m", b)
    log.mark_refused("m", 3, f"no: {tmp_path / 'state.npz'} is not usable")
    queries = []
    log._db.set_trace_callback(queries.append)
    reader = export.records(log, "m", fitted=2, after=0)
    first = next(reader)
    selects = [q for q in queries if q.lstrip().upper().startswith("SELECT")]
    assert len(selects) == 1 and "LIMIT 64" in selects[0]            # one page read, not the log
    log.append("m", [_config(99)])                                   # the reader holds no lock between pages
    rest = list(reader)
    got = [first] + rest
    assert [(r["version"], r["index"], r["status"]) for r in got] == \
        [(v, i, s) for v, s in ((1, "fitted"), (2, "fitted"), (3, "refused"), (4, "pending")) for i in range(3)] + \
        [(5, 0, "pending")]
    assert got[6]["reason"] == f"no: {tmp_path / 'state.npz'} is not usable"
    for r, c in zip(got, [c for b in batches for c in b] + [_config(99)]):
        _same(r, c)
    text = b"".join(export.to_extxyz(r) for r in got).decode()
    for a, c in zip(ase_read(io.StringIO(text), ":", format="extxyz"), [c for b in batches for c in b]):
        _same(_from_xyz(a), c)                                       # 17 digits: the same float64
    paged = [(b["version"], c.frame) for b, c in log.configs("m", 1, 4, page=2)]
    assert paged == [(v, i) for v in (2, 3, 4) for i in range(3)]

    # the route's body: the same records, joined into chunks of about CHUNK bytes, the last one short
    monkeypatch.setattr(learn_router, "CHUNK", 2000)
    learner = types.SimpleNamespace(name="m", log=log, fitted=2)
    chunks = list(learn_router._stream(learner, "msgpack", 0, None))
    assert len(chunks) > 3 and all(len(c) >= 2000 for c in chunks[:-1])
    for r in got[6:9]:                                               # the route shows no path of the server
        r["reason"] = "no: state.npz is not usable"
    assert b"".join(chunks) == export.header("m") + b"".join(export.to_msgpack(r) for r in got)
    assert str(tmp_path).encode() not in b"".join(chunks)

    log._db.execute("UPDATE configs SET energy = energy + 1e-12 WHERE model = 'm' AND version = 2 AND idx = 1")
    reader = log.configs("m", 1, page=2)
    assert next(reader)[0]["version"] == 2
    with pytest.raises(DataLogError, match="data version 2 .* sha256"):
        list(reader)
    log._db.execute("DELETE FROM configs WHERE model = 'm' AND version = 4 AND idx = 2")   # a batch's last row
    with pytest.raises(DataLogError, match="data version 4 .* sha256"):
        list(log.configs("m", 3))
