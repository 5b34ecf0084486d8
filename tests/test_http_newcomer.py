"""A newcomer's path, as documented: the quick-start commands start a server that answers /readyz
and the client example runs as written; the Docker image's commands work outside Docker.

The documented port 8000 is replaced by a free port; `.venv/bin/aceserver` / `aceserver` by this
interpreter's `python -m aceserver.cli` (the pip set-up line itself is what CI runs). When no
default model is shipped yet, a Si-tiny model is put in $ACESERVER_MODELS_DIR so that the command
is still run exactly as written.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys

import httpx
import pytest
import yaml

from _http_support import REPO, TMP, Server, free_port, make_model

pytestmark = pytest.mark.timeout(300)
MARKER = "tests/test_http_newcomer.py"


def _doc() -> str:
    readme = (REPO / "README.md").read_text()
    return readme if MARKER in readme else (REPO / "docs" / "serving.md").read_text()


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _models_env() -> dict:
    from aceserver.catalogue import ModelLookupError, default_model

    try:
        default_model()
        return {}
    except ModelLookupError:
        d = TMP / "shipped-models" / "Si-tiny"
        d.mkdir(parents=True, exist_ok=True)
        make_model().save(str(d / "Si-tiny.json"))
        return {"ACESERVER_MODELS_DIR": str(d.parent)}


def _command(words: list[str]) -> list[str]:
    assert words[0] in (".venv/bin/aceserver", "aceserver"), words
    return [sys.executable, "-m", "aceserver.cli", *words[1:]]


def test_quick_start_serves_and_client_example_runs():
    text = _doc().split("## Quick start", 1)[1]
    setup = _blocks(text, "bash")[0].strip().splitlines()
    readme = (REPO / "README.md").read_text()
    assert setup[0] in readme, "the documented set-up command must be the README's"
    serve = shlex.split(setup[1])
    assert serve[1] == "serve"
    with Server([], env=_models_env(), command=_command(serve)) as server:
        assert httpx.get(f"{server.url}/readyz", timeout=10).json()["status"] == "ready"
        example = _blocks(text, "python")[0].replace("http://127.0.0.1:8000", server.url)
        assert server.url in example
        r = subprocess.run([sys.executable, "-c", example], cwd=TMP, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "energy" in r.stdout and "eV/Å³" in r.stdout and "batch energies [" in r.stdout


def _dockerfile() -> dict[str, list[str]]:
    text = (REPO / "docker" / "Dockerfile").read_text().replace("\\\n", " ")
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, rest = line.partition(" ")
            out.setdefault(key.upper(), []).append(rest.strip())
    return out


def _json_array(value: str) -> list[str]:
    words = json.loads(value)
    assert isinstance(words, list), "exec form (a JSON array) so that SIGTERM reaches the server"
    return words


def test_dockerfile_shape():
    df = _dockerfile()
    base = dict(a.split("=", 1) for a in df["ARG"] if "=" in a)["BASE_IMAGE"]
    assert all(f.split()[0] == "${BASE_IMAGE}" for f in df["FROM"]), "build and runtime share one base"
    assert "slim" in base
    assert df["USER"] and df["USER"][-1] not in ("root", "0")
    assert any("--warm-only" in run for run in df["RUN"]), "numba cache warmed at build time"
    assert any("NUMBA_CACHE_DIR" in env for env in df["ENV"])
    health = df["HEALTHCHECK"][0]
    assert "/readyz" in health
    copied = {src for c in df["COPY"] if not c.startswith("--from") for src in c.split()[:-1]}
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text()
    for src in copied:
        assert f"!{src.rstrip('/')}" in ignore.replace("/\n", "\n"), src
        assert (REPO / src).exists(), src
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    service = compose["services"]["aceserver"]
    assert (REPO / "docker" / "compose.yaml").parent.joinpath(service["build"]["context"],
                                                               service["build"]["dockerfile"]).is_file()
    published = [p for s in compose["services"].values() for p in s.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published)


def test_docker_entry_command_outside_docker():
    """The image's build-time warm-up, its ENTRYPOINT + CMD and its HEALTHCHECK, run here."""
    df = _dockerfile()
    env = _models_env()
    warm = next(run for run in df["RUN"] if "--warm-only" in run)
    r = subprocess.run(_command(shlex.split(warm)), cwd=REPO, env={**os.environ, **env},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    entry = _json_array(df["ENTRYPOINT"][0]) + _json_array(df["CMD"][0])
    cmd = _command(entry)
    port = free_port()
    cmd[cmd.index("--port") + 1] = str(port)
    cmd[cmd.index("--host") + 1] = "127.0.0.1"        # tests bind loopback only
    with Server([], env=env, command=cmd, port=port) as server:
        health = re.search(r'CMD (\[.*\])', df["HEALTHCHECK"][0]).group(1)
        check = [w.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for w in _json_array(health)]
        check[0] = sys.executable if check[0] in ("python", "python3") else check[0]
        assert subprocess.run(check, timeout=30).returncode == 0
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(60) in (0, -signal.SIGTERM)


def test_default_model_lookup(tmp_path, monkeypatch):
    """zuo-Si when shipped, else Si-tiny, else a clear error naming where it looked."""
    from aceserver import catalogue

    monkeypatch.setattr(catalogue, "models_dirs", lambda: [tmp_path])
    with pytest.raises(catalogue.ModelLookupError, match="no shipped default model") as info:
        catalogue.default_model()
    assert str(tmp_path) in str(info.value) and "aceserver serve path/to/model.json" in str(info.value)
    (tmp_path / "zuo-Si").mkdir()
    (tmp_path / "zuo-Si" / "fit.yaml").write_text("not a model\n")     # a recipe only: not shipped yet
    (tmp_path / "Si-tiny").mkdir()
    (tmp_path / "Si-tiny" / "Si-tiny.json").write_text("{}")
    assert catalogue.default_model() == ("Si-tiny", tmp_path / "Si-tiny" / "Si-tiny.json")
    (tmp_path / "zuo-Si" / "zuo-Si.json").write_text("{}")
    assert catalogue.default_model() == ("zuo-Si", tmp_path / "zuo-Si" / "zuo-Si.json")
    assert catalogue.resolve("Si-tiny") == ("Si-tiny", tmp_path / "Si-tiny" / "Si-tiny.json")
    with pytest.raises(catalogue.ModelLookupError, match="neither a model file nor a shipped model"):
        catalogue.resolve("Cu-huge")
