"""Bad input gives a 4xx with a JSON body naming the field; never a 5xx; the server keeps serving."""
from __future__ import annotations

import json

import httpx
import msgpack
import numpy as np
import pytest

from _http_support import Server, model_file, shared_server

pytestmark = pytest.mark.timeout(300)

GOOD = {"numbers": [14, 14], "positions": [[0.0, 0.0, 0.0], [1.36, 1.36, 1.36]],
        "cell": [[0.0, 2.72, 2.72], [2.72, 0.0, 2.72], [2.72, 2.72, 0.0]], "pbc": [True, True, True]}


def with_(**changes):
    s = dict(GOOD)
    s.update(changes)
    return {k: v for k, v in s.items() if v is not ...}


@pytest.fixture(scope="module")
def server():
    return shared_server()


def _json_post(url, body: str | bytes, content_type="application/json", **headers):
    return httpx.post(url, content=body, headers={"Content-Type": content_type, **headers}, timeout=60)


# (case id, structure or whole body, expected status, expected field, a word of the message)
CASES = [
    ("unknown-element-number", {"structure": with_(numbers=[14, 6])}, 422, "structure.numbers[1]", "not in this model"),
    ("unknown-element-symbol", {"structure": with_(numbers=..., symbols=["Si", "Qq"])}, 422, "structure.symbols[1]",
     "unknown chemical symbol"),
    ("no-such-atomic-number", {"structure": with_(numbers=[14, 500])}, 422, "structure.numbers[1]", "118"),
    ("numbers-and-symbols", {"structure": with_(symbols=["Si", "Si"])}, 422, "structure.numbers", "exactly one"),
    ("nan-position", {"structure": with_(positions=[[0, 0, 0], [1, float("nan"), 1]])}, 422,
     "structure.positions[1][1]", "finite"),
    ("inf-cell", {"structure": with_(cell=[[float("inf"), 0, 0], [0, 5, 0], [0, 0, 5]])}, 422,
     "structure.cell[0][0]", "finite"),
    ("positions-2-columns", {"structure": with_(positions=[[0, 0], [1, 1]])}, 422, "structure.positions[0]", ""),
    ("positions-4-columns", {"structure": with_(positions=[[0, 0, 0, 0], [1, 1, 1, 1]])}, 422,
     "structure.positions[0]", ""),
    ("positions-count", {"structure": with_(positions=[[0, 0, 0]])}, 422, "structure.positions", "rows"),
    ("no-atoms", {"structure": with_(numbers=[], positions=[])}, 422, "structure.positions", ""),
    ("cell-shape", {"structure": with_(cell=[[5, 0, 0], [0, 5, 0]])}, 422, "structure.cell", ""),
    ("pbc-shape", {"structure": with_(pbc=[True, False])}, 422, "structure.pbc", ""),
    ("string-number", {"structure": with_(positions=[[0, 0, "0"], [1, 1, 1]])}, 422, "structure.positions[0][2]",
     ""),
    ("huge-position", {"structure": with_(positions=[[0, 0, 0], [1e300, 0, 0]], pbc=False, cell=...)}, 422,
     "structure.positions[1][0]", "less than or equal to"),
    ("huge-cell", {"structure": with_(cell=[[1e300, 0, 0], [0, 5, 0], [0, 0, 5]])}, 422, "structure.cell[0][0]",
     "less than or equal to"),
    ("on-top-of-an-image", {"structure": with_(positions=[[0, 0, 0], [5.43, 0, 0]],
                                               cell=[[5.43, 0, 0], [0, 5.43, 0], [0, 0, 5.43]])}, 422,
     "structure.positions", "on top of each other"),
    ("degenerate-cell", {"structure": with_(cell=[[0, 2.72, 2.72], [0, 5.44, 5.44], [2.72, 2.72, 0]])}, 422,
     "structure.cell", "degenerate"),
    ("zero-cell-periodic", {"structure": with_(cell=[[0, 0, 0]] * 3)}, 422, "structure.cell", "degenerate"),
    ("thin-cell", {"structure": with_(cell=[[0.0001, 0, 0], [0, 5, 0], [0, 0, 5]])}, 422, "structure.cell",
     "too small for this cutoff"),
    ("pbc-without-cell", {"structure": with_(cell=...)}, 422, "structure.cell", "no cell"),
    ("atoms-on-top", {"structure": with_(positions=[[1, 1, 1], [1, 1, 1]])}, 422, "structure.positions", ""),
    ("both-structure-and-list", {"structure": GOOD, "structures": [GOOD]}, 422, "structure", "exactly one"),
    ("neither", {}, 422, "structure", "exactly one"),
    ("empty-list", {"structures": []}, 422, "structures", ""),
    ("unknown-field", {"structure": GOOD, "energy_please": True}, 422, "energy_please", "Extra"),
    ("unknown-property", {"structure": GOOD, "properties": ["dipole"]}, 422, "properties[0]", ""),
    ("committee-without-one", {"structure": GOOD, "properties": ["committee"]}, 422, "properties", "committee"),
    ("not-an-object", [1, 2, 3], 422, "body", ""),
    ("too-many-atoms", {"structure": {"numbers": [14] * 2001,
                                      "positions": [[3.0 * i, 0.0, 0.0] for i in range(2001)]}}, 413,
     "structure.positions", "2001 atoms"),
    ("too-many-structures", {"structures": [GOOD] * 201}, 413, "structures", "201 structures"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_bad_input_matrix(server, case, fmt):
    _, body, status, field, word = case
    if fmt == "json":
        r = _json_post(f"{server.url}/v1/models/si/calculate", json.dumps(body))
    else:
        r = _json_post(f"{server.url}/v1/models/si/calculate", msgpack.packb(body), "application/msgpack",
                       Accept="application/msgpack")
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()
    assert err["field"] == field, err
    assert word in err["message"], err
    assert err["kind"] in {"invalid_input", "unknown_element", "too_large"}
    # ... and the server keeps serving
    ok = httpx.post(f"{server.url}/v1/models/si/calculate", json={"structure": GOOD}, timeout=60)
    assert ok.status_code == 200


@pytest.mark.parametrize("body, content_type, status, kind", [
    (b"{\"structure\": ", "application/json", 400, "malformed_body"),
    (b"", "application/json", 400, "malformed_body"),
    (b"\xc1\xc1", "application/msgpack", 400, "malformed_body"),
    (msgpack.packb({"structure": {"numbers": [14], "positions": {"dtype": "<f8", "shape": [1, 3], "data": b"x"}}}),
     "application/msgpack", 400, "malformed_body"),
    (msgpack.packb({"structure": {"numbers": [14], "positions": {"dtype": "|O", "shape": [1, 3], "data": b""}}}),
     "application/msgpack", 400, "malformed_body"),
    (msgpack.packb(msgpack.ExtType(5, b"abc")), "application/msgpack", 400, "malformed_body"),
    (b"[" * 100000, "application/json", 400, "malformed_body"),
    (b"structure=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    (b"<xml/>", "text/xml", 415, "unsupported_media_type"),
])
def test_malformed_bodies(server, body, content_type, status, kind):
    r = _json_post(f"{server.url}/v1/models/si/calculate", body, content_type)
    assert r.status_code == status, r.text
    assert r.json()["kind"] == kind


def test_msgpack_array_positions_accepted(server):
    pos = np.array(GOOD["positions"])
    body = dict(GOOD, positions={"dtype": "<f8", "shape": [2, 3], "data": pos.astype("<f8").tobytes()})
    r = _json_post(f"{server.url}/v1/models/si/calculate", msgpack.packb({"structure": body}), "application/msgpack")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")   # no msgpack Accept: JSON back


def test_unknown_model_and_route(server):
    r = httpx.post(f"{server.url}/v1/models/nope/calculate", json={"structure": GOOD}, timeout=10)
    assert r.status_code == 404 and r.json()["kind"] == "unknown_model" and "si" in r.json()["message"]
    r = httpx.get(f"{server.url}/v1/models/nope", timeout=10)
    assert r.status_code == 404 and r.json()["field"] == "name"
    r = httpx.get(f"{server.url}/v2/whatever", timeout=10)
    assert r.status_code == 404 and r.json()["kind"] == "not_found"
    r = httpx.get(f"{server.url}/v1/models/si/calculate", timeout=10)
    assert r.status_code == 405


def test_body_over_size_limit(server):
    # the shared server allows 2 MiB bodies: send 3 MiB of valid-looking JSON
    big = json.dumps({"structure": with_(numbers=[14] * 40000, positions=[[0.123456789] * 3] * 40000)})
    assert len(big) > 3 * 2**20 // 2
    r = _json_post(f"{server.url}/v1/models/si/calculate", big.encode() + b" " * (3 * 2**20 - len(big)))
    assert r.status_code == 413, r.text
    assert r.json()["field"] == "body" and "limit" in r.json()["message"]

    def chunks():   # no Content-Length: the limit holds while streaming
        for _ in range(48):
            yield b" " * 65536
    r = httpx.post(f"{server.url}/v1/models/si/calculate", content=chunks(),
                   headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413, r.text
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_token_auth(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    with Server([str(model_file("si")), "--token-file", str(token_file)]) as server:
        url = f"{server.url}/v1/models/si/calculate"
        r = httpx.post(url, json={"structure": GOOD}, timeout=60)
        assert r.status_code == 401 and r.json()["kind"] == "unauthorized" and "missing" in r.json()["message"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = httpx.post(url, json={"structure": GOOD}, headers={"Authorization": "Bearer wrong"}, timeout=60)
        assert r.status_code == 401 and "wrong" in r.json()["message"]
        r = httpx.get(f"{server.url}/v1/models", headers={"Authorization": "Basic czNjcmV0"}, timeout=60)
        assert r.status_code == 401
        r = httpx.post(url, json={"structure": GOOD}, headers={"Authorization": "Bearer s3cret-token"}, timeout=60)
        assert r.status_code == 200
        # health, readiness and metrics stay open (probes and scrapers)
        assert httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200

        from aceclient import ACEServerCalculator, AuthenticationError
        with pytest.raises(AuthenticationError, match="missing bearer token"):
            ACEServerCalculator(server.url)
        with ACEServerCalculator(server.url, token="s3cret-token") as calc:
            assert calc.model == "si"


def test_client_errors_carry_server_message(server):
    from ase import Atoms

    from aceclient import ACEServerCalculator, InvalidInputError, ModelNotFoundError, RequestTooLargeError

    with pytest.raises(ModelNotFoundError, match="no model named 'nope'"):
        ACEServerCalculator(server.url, model="nope")
    with ACEServerCalculator(server.url, model="si") as calc:
        atoms = Atoms("SiC", positions=[[0, 0, 0], [1.5, 0, 0]])
        atoms.calc = calc
        with pytest.raises(InvalidInputError, match=r"element C \(Z=6\) is not in this model") as info:
            atoms.get_potential_energy()
        assert info.value.status == 422 and info.value.field == "structures[0].numbers[1]"
        with pytest.raises(RequestTooLargeError, match="201 structures"):
            calc.calculate_many([Atoms("Si", positions=[[0, 0, 0]])] * 201)
    from aceclient import ACEServerConnectionError
    with pytest.raises(ACEServerConnectionError):
        ACEServerCalculator("http://127.0.0.1:9", timeout=2)


def test_cli_without_model_file_fails_clearly(tmp_path):
    import subprocess
    import sys

    from _http_support import REPO
    r = subprocess.run([sys.executable, "-m", "aceserver.cli", "serve", str(tmp_path / "missing.json")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "neither a model file nor a shipped model" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{not a model")
    r = subprocess.run([sys.executable, "-m", "aceserver.cli", "serve", str(bad)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "aceserver serve:" in r.stderr and "Traceback" not in r.stderr
