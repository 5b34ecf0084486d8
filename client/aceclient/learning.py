"""`ACELearning`: labelled data for a model served with `aceserver serve --learn NAME`
(POST /v1/models/{name}/data), and its learning state.

    learn = ACELearning("http://127.0.0.1:8000", token=TOKEN)
    posted = learn.post("Si", frames)             # ase.Atoms with energy and forces (a DFT calculator's results)
    learn.wait("Si", posted["version"])           # until the served model is fitted on that data version

Labels are read from each `Atoms`' calculator results (`atoms.calc`: energy eV, forces eV/Å, stress
eV/Å³ in ASE's Voigt order, if it has one), else from `atoms.info["energy"]` (eV),
`atoms.arrays["forces"]` (eV/Å) and `atoms.info["virial"]` (eV, W = -V·σ) or `atoms.info["stress"]`
(eV/Å³); the config_type from the argument, else `atoms.info["config_type"]`, else the server's
default. Bodies go as msgpack, arrays as raw little-endian buffers.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from urllib.parse import quote

import numpy as np
from ase import Atoms

from ._api import APIClient, _pack_array
from .calculator import structure
from .errors import ACEServerError


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
