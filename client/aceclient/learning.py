"""`ACELearning`: labelled data for a model served with `aceserver serve --learn NAME`
(POST /v1/models/{name}/data), and its learning state.

    learn = ACELearning("http://127.0.0.1:8000", token=TOKEN)
    posted = learn.post("Si", frames)             # ase.Atoms with energy and forces (a DFT calculator's results)
    learn.wait("Si", posted["version"])           # until the served model is fitted on that data version
    learn.download("Si", "posted.xyz")            # every posted configuration back, as extended XYZ

Labels are read from each `Atoms`' calculator results (`atoms.calc`: energy eV, forces eV/Å, stress
eV/Å³ in ASE's Voigt order, if it has one), else from `atoms.info["energy"]` (eV),
`atoms.arrays["forces"]` (eV/Å) and `atoms.info["virial"]` (eV, W = -V·σ) or `atoms.info["stress"]`
(eV/Å³); the config_type from the argument, else `atoms.info["config_type"]`, else the server's
default. Bodies go as msgpack, arrays as raw little-endian buffers.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import BinaryIO
from urllib.parse import quote

import numpy as np
import urllib3
from ase import Atoms

from ._api import APIClient, _pack_array
from .calculator import structure
from .errors import ACEServerConnectionError, ACEServerError

CHUNK = 1 << 16


def labelled(atoms: Atoms, config_type: str | None = None) -> dict:
    """One `Atoms` and its labels as the data route's structure (see the module docstring)."""
    doc = structure(atoms, binary=True)
    results = getattr(atoms.calc, "results", None) or {}
    energy = results.get("energy", atoms.info.get("energy"))
    forces = results.get("forces", atoms.arrays.get("forces"))
    if energy is None or forces is None:
        raise ValueError("a labelled structure needs an energy (eV) and forces (eV/Å): attach a calculator's "
                         "results or set atoms.info['energy'] and atoms.arrays['forces']")
    doc["energy"] = float(energy)
    doc["forces"] = _pack_array(np.asarray(forces, dtype=float), "<f8")
    stress = results.get("stress", atoms.info.get("stress"))
    if atoms.info.get("virial") is not None:
        doc["virial"] = _pack_array(np.asarray(atoms.info["virial"], dtype=float).reshape(3, 3), "<f8")
    elif stress is not None:
        doc["stress"] = _pack_array(np.asarray(stress, dtype=float), "<f8")
    kind = config_type if config_type is not None else atoms.info.get("config_type")
    if kind is not None:
        doc["config_type"] = str(kind)
    return doc


class ACELearning(APIClient):
    """Client of the learning API. url: the server; token: its bearer token, if it has one."""

    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None, *, timeout: float = 300.0):
        super().__init__(url, token, timeout=timeout, maxsize=2)

    def post(self, model: str, images: Atoms | Sequence[Atoms], config_type: str | None = None) -> dict:
        """Post labelled structures as one batch; the reply (`version`, `sha256`, `configs`, `atoms`, `added`,
        `learning`). Raises `InvalidInputError` naming the bad label, nothing being logged."""
        images = [images] if isinstance(images, Atoms) else list(images)
        body = {"structures": [labelled(a, config_type) for a in images]}
        return self._json("POST", f"/v1/models/{quote(model, safe='')}/data", body)

    def status(self, model: str) -> dict:
        """The learning state: `data_version` of the served model, `pending`, `refit`, `served`."""
        return self._json("GET", f"/v1/models/{quote(model, safe='')}/data")

    def wait(self, model: str, version: int, timeout: float | None = None, poll: float = 0.2) -> dict:
        """Wait until the served model is fitted on data version `version` (or later); the status.
        Raises `ACEServerError` (kind `refit_failed`) if the refit of that version fails."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(model)
            if status.get("data_version", 0) >= version:
                return status
            refit = status.get("refit") or {}
            if refit.get("state") == "failed" and version in refit.get("versions", []):
                raise ACEServerError(f"the refit of model {model!r} with data version {version} failed: "
                                     f"{refit.get('error')}", kind="refit_failed")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"model {model!r} is not fitted on data version {version} after {timeout} s")
            time.sleep(poll)

    def download(self, model: str, path_or_file: str | os.PathLike | BinaryIO, format: str = "extxyz",
                 since: int = 0, until: int | None = None) -> int:
        """Write the model's posted configurations (data versions above `since`, up to `until`) to a path
        or a binary file, streamed; the bytes written. `format`: "extxyz" (extended XYZ, floats with 17
        significant digits: lossless; `ase.io.read(path, ":")`) or "msgpack" (a header map, then one map per
        configuration, arrays as raw float64; `msgpack.Unpacker`). Units: Å, eV, eV/Å, virial eV (W = -V·σ).
        Each configuration says its `data_version`, `config_type` and `status` (fitted, pending or refused).
        To a path, the file appears only once the whole reply has arrived (written beside it, then renamed)."""
        query = f"format={quote(format)}&since={int(since)}" + ("" if until is None else f"&until={int(until)}")
        r = self._request("GET", f"/v1/models/{quote(model, safe='')}/data/configurations?{query}",
                          preload_content=False)
        try:
            if hasattr(path_or_file, "write"):
                return _copy(r, path_or_file)
            part = f"{os.fspath(path_or_file)}.part"
            try:
                with open(part, "wb") as out:
                    written = _copy(r, out)
                os.replace(part, path_or_file)
            finally:
                if os.path.exists(part):
                    os.unlink(part)
            return written
        finally:
            r.release_conn()


def _copy(r, out: BinaryIO) -> int:
    """A streamed reply's body into `out`; a reply cut short (the server failed mid-way) raises."""
    written = 0
    try:
        for chunk in r.stream(CHUNK):
            out.write(chunk)
            written += len(chunk)
    except urllib3.exceptions.HTTPError as ex:
        raise ACEServerConnectionError(f"the download was cut short after {written} bytes: {ex}") from ex
    return written
