"""`ACEServerCalculator`: an ASE calculator whose results come from an aceserver HTTP server, with
the options, result names, units and shapes of the in-process `aceserver.ACECalculator` (committee
spreads, the extrapolation grade γ), so that user code can switch between the two."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from ._api import APIClient, _pack_array
from .errors import ACEServerError

# Everything the evaluator computes in one pass; asked for together so that ASE's caching works.
PROPERTIES = ["energy", "forces", "stress", "energies"]


def structure(atoms: Atoms, binary: bool) -> dict:
    """An `ase.Atoms` as the API's structure (positions and cell in Å)."""
    if binary:
        return {"numbers": _pack_array(atoms.numbers, "<i8"), "positions": _pack_array(atoms.positions, "<f8"),
                "cell": _pack_array(np.asarray(atoms.cell), "<f8"), "pbc": [bool(p) for p in atoms.pbc]}
    return {"numbers": atoms.numbers.tolist(), "positions": atoms.positions.tolist(),
            "cell": np.asarray(atoms.cell).tolist(), "pbc": [bool(p) for p in atoms.pbc]}


def ase_results(result: dict) -> dict:
    """A server result as ASE calculator results (numpy arrays; absent properties left out)."""
    out = {}
    for key, value in result.items():
        if value is None:
            continue
        out[key] = value if isinstance(value, (float, int)) else np.asarray(value, dtype=float)
    if "energy" in out:
        out.setdefault("free_energy", out["energy"])
    return out


def packed_batch(images: Sequence[Atoms]) -> dict:
    """The `packed` map of a request: counts, numbers, positions (Å), cells (Å), pbc, one msgpack
    array map each."""
    return {"counts": _pack_array([len(a) for a in images], "<i8"),
            "numbers": _pack_array(np.concatenate([a.numbers for a in images]), "<i8"),
            "positions": _pack_array(np.concatenate([a.positions for a in images]).reshape(-1, 3), "<f8"),
            "cells": _pack_array(np.stack([np.asarray(a.cell) for a in images]), "<f8"),
            "pbc": _pack_array(np.stack([a.pbc for a in images]), "|b1")}


PER_STRUCTURE = ("energy", "energy_std", "max_gamma")             # (S,)
PER_STRUCTURE_ROWS = ("stress", "virial", "energy_committee")   # (S, ...)
PER_ATOM = ("forces", "energies", "forces_std", "energies_std", "gamma", "descriptors")       # (N, ...)


def unpack_results(packed: dict, counts: np.ndarray) -> list[dict]:
    """A packed reply as one `ase_results`-style dict per structure (stress left out where the
    reply has a NaN row: the structure has none)."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
    out = []
    for k in range(len(counts)):
        a, b = offsets[k], offsets[k + 1]
        r: dict[str, Any] = {}
        for key, value in packed.items():
            if key in PER_STRUCTURE:
                r[key] = float(value[k])
            elif key in PER_STRUCTURE_ROWS:
                if not (key == "stress" and np.isnan(value[k]).all()):
                    r[key] = value[k].copy()
            elif key in PER_ATOM:
                r[key] = value[a:b].copy()
            elif key == "forces_committee":
                r[key] = value[:, a:b].copy()
        if "energy" in r:
            r["free_energy"] = r["energy"]
        out.append(r)
    return out


class ACEServerCalculator(APIClient, Calculator):
    """ASE calculator that evaluates structures on an `aceserver serve` server.

    url: the server, e.g. ``"http://127.0.0.1:8000"``. model: name of a served model (None: the
    server's default). token: bearer token, when the server has one. binary: msgpack (default) or JSON.
    One keep-alive HTTP connection is reused for all calls; `close()` (or a `with` block) ends it.
    While the server is still warming up (503 not_ready), requests are retried for up to
    ready_timeout seconds. Server errors raise `aceclient.ACEServerError` subclasses carrying the
    server's message.

    The options and results are those of `aceserver.ACECalculator`: energy, free_energy (eV),
    forces (eV/Å), stress (eV/Å³, Voigt, periodic cells only), energies (eV per atom); with a
    committee also energy_committee (eV, one per member) and energy_std (eV) (committee=False skips
    them); with energies_std=True energies_std (N,) eV, the spread of each atom's site energy; with
    committee_forces=True forces_committee (K, N, 3) and forces_std (N, 3) eV/Å (both: models with
    a committee; without one they are left out, as in process). Every spread is the population
    standard deviation over the K members (ddof 0), computed by the server.

    gamma=True (the served model needs an active set: `GET /v1/models/{name}` says
    `gamma_available`; without one the constructor raises the server's 422 `no_active_set` as
    `InvalidInputError`, a ValueError like the local `NoActiveSetError`) adds gamma (N,), the
    extrapolation grade of each atom (dimensionless; ≤ 1 interpolates, 1-5 mild extrapolation,
    > 5 unreliable), and max_gamma (float), on every gamma_every-th calculation (the 1st, the
    n+1-th, ...); the others leave them out (``calc.results.get("max_gamma")``).
    ``calc.get_property("max_gamma", atoms)`` computes them whatever gamma_every says.
    `calculate_many` gives them for every structure of the batch.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, url: str = "http://127.0.0.1:8000", model: str | None = None, token: str | None = None,
                 *, binary: bool = True, timeout: float = 300.0, ready_timeout: float = 120.0,
                 committee: bool = True, committee_forces: bool = False, energies_std: bool = False,
                 gamma: bool = False, gamma_every: int = 1, **kwargs):
        if isinstance(gamma_every, bool) or not isinstance(gamma_every, int) or gamma_every < 1:
            raise ValueError(f"gamma_every must be a positive integer, got {gamma_every!r}")
        Calculator.__init__(self, **kwargs)
        APIClient.__init__(self, url, token, timeout=timeout, binary=binary, ready_timeout=ready_timeout)
        self.committee = committee            # False skips the members' energies (faster MD)
        self.committee_forces = committee_forces
        self.energies_std = energies_std
        self.gamma, self.gamma_every = gamma, gamma_every
        if gamma:       # so that get_property("max_gamma") works; ASE checks this list first
            self.implemented_properties = [*type(self).implemented_properties, "gamma", "max_gamma"]
        self.calculations = 0                 # calculations done; γ on those with index % gamma_every == 0
        try:
            self.model = model if model is not None else self._call("GET", "/v1/models")["default"]
            self._path = f"/v1/models/{quote(self.model, safe='')}/calculate"
            self.model_info = self._call("GET", f"/v1/models/{quote(self.model, safe='')}")   # species, rcut (Å), ...
            if gamma and not self.model_info.get("gamma_available"):
                self._ask_for_gamma()
        except BaseException:
            self.close()
            raise
        # the properties a calculation asks for, without and with γ
        committee_props = ([] if not self.model_info.get("committee_size") else
                           ["committee"] * committee + ["forces_committee"] * committee_forces
                           + ["energies_std"] * energies_std)
        self._asked = {False: PROPERTIES + committee_props, True: PROPERTIES + committee_props + ["gamma"]}

    def _ask_for_gamma(self) -> None:
        """γ of one atom: the server's 422 `no_active_set` (its reason: no sidecar, a stale one, ...),
        raised as `InvalidInputError`, where the model has no active set."""
        species = self.model_info["species"][0]
        self._call("POST", self._path, {"structure": {"symbols": [species], "positions": [[0.0, 0.0, 0.0]]},
                                        "properties": ["max_gamma"]})
        # answered: the model got an active set since its description was read (a hot reload)

    # -- HTTP -----------------------------------------------------------------------------------
    def evaluate(self, images: Sequence[Atoms], properties: Sequence[str] | None = None) -> list[dict]:
        """Raw server results for several structures in one request (one dict per structure)."""
        body: dict[str, Any] = {"structures": [structure(a, self.binary) for a in images]}
        if properties is not None:
            body["properties"] = list(properties)
        reply = self._call("POST", self._path, body)
        if not isinstance(reply, dict) or len(reply.get("results", ())) != len(images):
            raise ACEServerError(f"unexpected reply from {self.url}: {str(reply)[:200]}")
        return [ase_results(r) for r in reply["results"]]

    def evaluate_packed(self, images: Sequence[Atoms], properties: Sequence[str] | None = None) -> list[dict]:
        """As `evaluate`, with the batch packed (msgpack only; the server's docs/serving.md, "Packed
        batches"): counts, numbers, positions (Å), cells (Å), pbc as one array each, and the
        reply as one array per property, split here into one results dict per structure."""
        counts = np.array([len(a) for a in images], dtype="<i8")
        body: dict[str, Any] = {"packed": packed_batch(images)}
        if properties is not None:
            body["properties"] = list(properties)
        reply = self._call("POST", self._path, body)
        packed = reply.get("packed") if isinstance(reply, dict) else None
        if not isinstance(packed, dict) or not np.array_equal(packed.get("counts"), counts):
            raise ACEServerError(f"unexpected reply from {self.url}: {str(reply)[:200]}")
        return unpack_results(packed, counts)

    # -- ASE ------------------------------------------------------------------------------------
    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes):
        Calculator.calculate(self, atoms, properties, system_changes)
        # γ on every gamma_every-th calculation, and whenever it is asked for by name
        with_gamma = self.gamma and (self.calculations % self.gamma_every == 0
                                     or "gamma" in properties or "max_gamma" in properties)
        result = self.evaluate([self.atoms], self._asked[with_gamma])[0]
        self.calculations += 1
        self.results = self._as_local(result)

    def calculate_many(self, images: Sequence[Atoms]) -> list[dict]:
        """The results of many structures in one request, a list of dicts with the keys
        `calc.results` has for the same options (γ for every structure when gamma=True). With
        msgpack (binary=True) the batch travels packed: a few arrays for all structures
        (`evaluate_packed`). The numbers are those of one calculation per structure, but for γ and
        energies_std, which the server's batch gives within the rounding of their BLAS products."""
        images = list(images)
        if not images:
            return []
        evaluate = self.evaluate_packed if self.binary else self.evaluate
        return [self._as_local(r) for r in evaluate(images, self._asked[self.gamma])]

    def _as_local(self, result: dict) -> dict:
        """A server result as `ACECalculator` gives it: the committee energies only where asked
        for (the server adds them to `forces_committee`)."""
        if not self.committee:
            result.pop("energy_committee", None)
            result.pop("energy_std", None)
        return result
