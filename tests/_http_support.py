"""Helpers for the HTTP tests: real ACE model files and real `aceserver serve` processes.

Every server runs on a free loopback port, is waited for with a bounded timeout and is always
killed (at the end of its `with` block, or at interpreter exit for the shared one).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
READY_TIMEOUT = float(os.environ.get("ACESERVER_TEST_READY_TIMEOUT", "180"))
_tmp = tempfile.TemporaryDirectory(prefix="aceserver-http-tests-")
atexit.register(_tmp.cleanup)
TMP = Path(_tmp.name)


def make_model(committee: int = 0, seed: int = 0):
    import aceserver

    model = aceserver.ace1_model(elements=["Si"], order=2, totaldegree=6, rcut=5.0)
    rng = np.random.default_rng(seed)
    model.parameters = rng.normal(scale=0.1, size=model.length_basis)
    if committee:
        model.committee = model.parameters + rng.normal(scale=0.01, size=(committee, model.length_basis))
    model.metadata = {"fit": {"errors": {"train": {"rmse": {"set": {"E": 0.0015, "F": 0.05, "V": None}}}},
                              "units": {"E": "eV/atom", "F": "eV/Å", "V": "eV/atom"}},
                      "note": "random parameters, for tests"}
    return model


def model_file(kind: str = "si") -> Path:
    """A saved model file: "si" (plain) or "sic" (with a 4-member committee); cached per session."""
    path = TMP / f"{kind}.json"
    if not path.exists():
        make_model(committee=4 if kind == "sic" else 0, seed=1 if kind == "sic" else 0).save(str(path))
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(url: str) -> bool:
    """Whether the server at url answers /readyz with 200 (False while it cannot be reached)."""
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def serve_command() -> list[str]:
    return [sys.executable, "-m", "aceserver.cli", "serve"]


class Server:
    """One `aceserver serve` process."""

    def __init__(self, args: list[str], env: dict | None = None, command: list[str] | None = None, port=None,
                 cwd=None, base_env: dict | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = TMP / f"server-{self.port}.log"
        cmd = (command or serve_command()) + list(args)
        if "--port" not in cmd:
            cmd += ["--port", str(self.port)]
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(cmd, cwd=cwd or REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**(os.environ if base_env is None else base_env), **(env or {})})

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            if ready(self.url):
                return self
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log.read_text(errors="replace")[-5000:]

    def stop(self) -> int | None:
        if self.proc.poll() is None:    # one process: uvicorn runs inside `aceserver serve`
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "Server":
        try:
            return self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


_shared: dict[str, Server] = {}


def shared_server() -> Server:
    """The server most tests share: models `si` and `sic` (committee), moderate limits, no token."""
    if "main" not in _shared:
        server = Server([f"si={model_file('si')}", f"sic={model_file('sic')}", "--max-atoms", "2000",
                         "--max-structures", "200", "--max-body-mb", "2", "--workers", "4"])
        atexit.register(server.stop)
        _shared["main"] = server.__enter__()
    return _shared["main"]


def si_structures():
    """A mix of sizes: periodic crystals (rattled, 2 to 64 atoms), a slab and a cluster."""
    from ase.build import bulk

    rng = np.random.default_rng(42)
    out = []
    prim = bulk("Si")
    cubic = bulk("Si", cubic=True)
    for atoms in (prim, prim.repeat((2, 1, 1)), cubic, cubic.repeat((2, 1, 1)), cubic.repeat(2)):
        a = atoms.copy()
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        out.append(a)
    slab = cubic.repeat((2, 2, 1))
    slab.pbc = (True, True, False)
    slab.cell[2] = [0, 0, 0]
    out.append(slab)
    cluster = cubic.repeat((1, 1, 1))
    cluster.pbc = False
    cluster.cell = np.zeros((3, 3))
    cluster.positions += rng.normal(scale=0.05, size=cluster.positions.shape)
    out.append(cluster)
    return out


def structure_json(atoms) -> dict:
    """An ase.Atoms as the JSON structure of a request (numbers, positions Å, cell Å, pbc)."""
    return {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
            "cell": atoms.cell.array.tolist(), "pbc": atoms.pbc.tolist()}


def wait_job(url: str, job: str, timeout: float = 300) -> dict:
    """Poll GET /v1/jobs/{job} until the job has left queued and running; its status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = httpx.get(f"{url}/v1/jobs/{job}", timeout=30).json()
        if status["state"] not in ("queued", "running"):
            return status
        time.sleep(0.05)
    raise TimeoutError(job)
