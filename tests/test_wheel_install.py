"""A non-editable install serves: build the wheel, install it into a fresh virtual environment, and
from a directory outside the checkout run `aceserver models` and `aceserver serve` (no MODEL: the
shipped default), then compare one calculation with the checkout's model evaluated in-process.

The new environment gets aceserver only from the wheel (`pip install --no-deps --no-index`); its
dependencies (numpy, numba, ...) are borrowed from this interpreter's site-packages through a
`.pth` line, which adds that folder to sys.path without running its editable-install hooks, so no
network is needed and the checkout is never on the path.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile

import httpx
import numpy as np
import pytest

from _http_support import REPO, TMP, Server

pytestmark = pytest.mark.timeout(600)
BUILD_INPUTS = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "aceserver", "models")
MACHINE_PATHS = (str(REPO).encode(), b"/work/", b"/root/", b"/home/")


@pytest.fixture(scope="module")
def wheel():
    src = TMP / "wheel-src"                     # build from a copy: the checkout stays untouched
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.nbi", "*.nbc", "*.egg-info")
    for name in BUILD_INPUTS:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, src / name, **(
            {"ignore": ignore} if (REPO / name).is_dir() else {}))
    dist = TMP / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist),
                        str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = dist.glob("aceserver-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel):
    env_dir = TMP / "wheel-venv"
    shutil.rmtree(env_dir, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    deps = [p for p in site.getsitepackages() if os.path.isdir(p)]
    with open(os.path.join(purelib, "borrowed-dependencies.pth"), "w") as fh:
        fh.write("\n".join(deps) + "\n")
    return env_dir, purelib


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ACESERVER_MODELS_DIR", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def test_wheel_carries_models_and_page_without_machine_paths(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        for model in ("zuo-Si", "Si-tiny"):
            assert f"aceserver/data/models/{model}/{model}.json" in names
            assert f"aceserver/data/models/{model}/plots/parity_energy.png" in names
            assert f"aceserver/data/models/{model}/{model}.activeset.npz" in names   # γ
        assert {"aceserver/web/index.html", "aceserver/web/app.js", "aceserver/web/style.css"} <= set(names)
        assert not [n for n in names if n.endswith(("selection.json", "fit.yaml"))], "fit inputs are not shipped"
        for n in names:
            if n.startswith("aceserver/data/models/") and not n.endswith(".png"):
                data = z.read(n)
                assert not [p for p in MACHINE_PATHS if p in data], f"{n} names a path of this machine"
    # 8 MB of models and code, plus the six zuo active sets (1.5-2.5 MB each, compressed float64)
    assert wheel.stat().st_size < 24_000_000, f"wheel is {wheel.stat().st_size} bytes"


def test_wheel_models_name_no_shared_paths(wheel):
    with zipfile.ZipFile(wheel) as z:
        bad = [n for n in z.namelist() if n.startswith("aceserver/data/models/")
               and any(p in z.read(n) for p in (b"../shared", b"/work/", b"/tmp/", b"/home/", b"/root/"))]
    assert not bad, bad


def test_installed_wheel_lists_and_serves_from_elsewhere(venv):
    env_dir, purelib = venv
    elsewhere = TMP / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    aceserver_cmd = str(env_dir / "bin" / "aceserver")

    r = subprocess.run([aceserver_cmd, "models", "--json"], cwd=elsewhere, env=_clean_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    listing = json.loads(r.stdout)
    assert listing["default"] == "zuo-Si"
    names = {m["name"]: m for m in listing["models"]}
    assert {"zuo-Si", "Si-tiny", "TiAl-tutorial"} <= set(names)
    for m in names.values():
        assert m["path"].startswith(purelib), m["path"]        # found in the installed package
        assert "error" not in m, m

    from aceserver import load_model

    reference = load_model(str(REPO / "models" / "zuo-Si" / "zuo-Si.json"))
    assert names["zuo-Si"]["sha256"] == reference.sha256
    with Server([], command=[aceserver_cmd, "serve"], cwd=elsewhere, base_env=_clean_env()) as server:
        positions = np.array([[0.0, 0.0, 0.0], [1.36, 1.36, 1.36], [2.715, 2.715, 0.0], [4.07, 4.07, 1.36]])
        cell = np.eye(3) * 5.43
        r = httpx.post(f"{server.url}/v1/models/zuo-Si/calculate", timeout=120,
                       json={"structure": {"symbols": ["Si"] * 4, "positions": positions.tolist(),
                                           "cell": cell.tolist(), "pbc": True}})
        assert r.status_code == 200, r.text
        assert httpx.get(f"{server.url}/", timeout=10).text.startswith("<!doctype html>")
        assert purelib in server.output()       # the log names the installed model file
    doc = r.json()
    ref = reference.evaluate([14] * 4, positions, cell, np.ones(3, bool))
    assert doc["sha256"] == reference.sha256
    assert abs(doc["results"][0]["energy"] - ref.energy) < 1e-9
    np.testing.assert_allclose(doc["results"][0]["forces"], ref.forces, rtol=1e-10, atol=1e-10)
