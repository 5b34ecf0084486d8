"""Property-based fuzz of the data route on a learning server (schemathesis, from the OpenAPI
schema): valid (schema-conforming) and invalid labelled structures, JSON and msgpack, then
well-formed Si structures with random geometry and labels (hypothesis). No reply is a 5xx, the
server stays up, every accepted post is a new data version in order, and the refits of all that
was accepted succeed: what the route accepts, the fitter can use.
"""
from __future__ import annotations

import io
import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from aceserver.fitting import incremental

from _http_support import Server
from test_fit_incremental import E0_SI, fit_config

pytestmark = pytest.mark.timeout(600)
OPERATION = "POST /v1/models/{name}/data"


_label = st.floats(-1e4, 1e4, allow_nan=False)


@st.composite
def _labelled(draw):
    n = draw(st.integers(1, 6))
    box = draw(st.floats(4.0, 12.0))
    xyz = st.lists(st.floats(0.0, box, allow_nan=False), min_size=3, max_size=3)
    doc = {"numbers": [14] * n, "positions": draw(st.lists(xyz, min_size=n, max_size=n)),
           "cell": [[box, 0, 0], [0, box, 0], [0, 0, box]], "pbc": draw(st.lists(st.booleans(), min_size=3, max_size=3)),
           "energy": draw(_label), "forces": draw(st.lists(st.lists(st.floats(-50, 50), min_size=3, max_size=3),
                                                           min_size=n, max_size=n)),
           "config_type": draw(st.sampled_from(["default", "liq", "new type"]))}
    if all(doc["pbc"]) and draw(st.booleans()):
        doc["stress"] = draw(st.lists(st.floats(-1, 1), min_size=6, max_size=6))
    return doc


def test_data_route_fuzz(tmp_path):
    cfg = fit_config(tmp_path, {"name": "qr", "lambda": 1.0}, E0={"Si": E0_SI})
    incremental.fit_with_state(cfg, plots=False, progress=False, threads=2, out=io.StringIO())
    args = [f"si={cfg.output_model}", "--learn", "si", "--learn-dir", str(tmp_path / "learn"), "--max-atoms", "64",
            "--max-structures", "8", "--max-body-mb", "1", "--max-pairs", "200000", "--workers", "2"]
    with Server(args) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        operation = next(r.ok() for r in schema.get_all_operations() if r.ok().label == OPERATION)
        statuses: dict[int, int] = {}
        versions: list[int] = []
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @settings(max_examples=60, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case):
                response = case.call(base_url=server.url, timeout=60)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code < 500 or response.json()["kind"] == "too_much_pending", \
                    (case.body, response.text[:500])
                if response.status_code == 202:
                    versions.append(response.json()["version"])
            check()
        # well-formed Si structures with random geometry and labels, so that posts reach the log and the refit
        with httpx.Client(base_url=server.url, timeout=60) as client:
            @settings(max_examples=40, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(doc=_labelled())
            def post(doc):
                response = client.post("/v1/models/si/data", json={"structure": doc})
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                assert response.status_code in (202, 413, 422) or response.json()["kind"] == "too_much_pending", \
                    response.text[:500]
                if response.status_code == 202:
                    versions.append(response.json()["version"])
            post()
        print(dict(sorted(statuses.items())), "accepted versions:", versions)
        assert len(versions) >= 10
        assert versions == list(range(2, 2 + len(versions)))
        deadline = time.monotonic() + 300
        while True:
            status = httpx.get(f"{server.url}/v1/models/si/data", timeout=30).json()
            if status["refit"]["state"] != "running" and (status["data_version"] == status["latest_version"]
                                                          or status["refit"]["state"] == "failed"):
                break
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert status["refit"]["state"] == "idle", status["refit"]
        assert server.proc.poll() is None
