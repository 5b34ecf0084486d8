"""`aceclient.ACEServerCalculator` against the in-process `aceserver.ACECalculator` with the same
options (committee, committee_forces, energies_std, gamma, gamma_every), through a real
`aceserver serve` process, in msgpack and in JSON.

Exactness. One calculation is one `model.evaluate` of the same arrays on either side (the server
evaluates a one-structure request on its own, on the serial kernel, as the local calculator does
below 256 atoms), and both codecs carry float64 exactly: msgpack as raw bytes, JSON as Python's
shortest round-trip repr, which `json.loads` reads back to the same double. But the two sides are
two processes, and numba's machine code for the fastmath kernels (kernels/ylm.py,
kernels/atomic_base.py) differs in the last bits between a fresh compile and the same kernel loaded
from numba's cache (LLVM reassociates the inlined sums differently; measured: forces 4.4e-16 eV/Å
apart on this 16-atom cell; without fastmath the two agree bit for bit). Which side compiled and which
loaded depends on the cache's state (a fresh clone: this process compiles, the server loads), so
numbers are compared within the bound of one reassociated evaluation (`close`): each output is a sum
over ≤ 64 neighbours of L-term products, so two orders differ by at most 2·64·L·ε times the sum of
the magnitudes, taken here as the array's largest magnitude times the number of summed outputs
(atoms for the energy). Everything discrete (keys, shapes, which calls have γ, counts) is exact. The local calculator runs with skin=0:
its Verlet list's refreshed pair vectors (R + Δ) round differently from a fresh neighbour search,
which a server of unrelated structures always does. `calculate_many` goes through the server's
batch (`evaluate_many`), whose γ and energies_std are BLAS products over other row counts, a
rounding well inside the same bound.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.verlet import VelocityVerlet

from _http_support import REPO, TMP, Server, model_file, si_structures

pytestmark = pytest.mark.timeout(600)
SI_TINY = REPO / "models" / "Si-tiny" / "Si-tiny.json"
OPTIONS = dict(committee_forces=True, energies_std=True, gamma=True, gamma_every=2)


def stale_model():
    """Si-tiny with its parameters scaled by 1.0001 and Si-tiny's active-set sidecar beside it: the
    sidecar names another model's sha256, so the model loads without an active set, the reason
    in `active_set_problem`."""
    import aceserver

    path = TMP / "client-stale" / "stale.json"
    if not path.exists():
        path.parent.mkdir(exist_ok=True)
        model = aceserver.load_model(str(SI_TINY))
        model.parameters = model.parameters * 1.0001
        model.save(str(path))
        shutil.copy(SI_TINY.with_suffix(".activeset.npz"), path.with_suffix(".activeset.npz"))
    return path


@pytest.fixture(scope="module")
def server():
    # tiny: a committee and an active set; si: neither (random parameters); stale: a refused sidecar
    with Server([f"tiny={SI_TINY}", f"si={model_file('si')}", f"stale={stale_model()}", "--max-atoms", "2000",
                 "--workers", "2"]) as s:
        yield s


@pytest.fixture(scope="module")
def tiny():
    import aceserver

    model = aceserver.load_model(str(SI_TINY))
    assert model.committee is not None and model.active_set is not None
    return model


def local_calculator(model, **options):
    import aceserver

    return aceserver.ACECalculator(model, skin=0, **options)


EPS = np.finfo(float).eps


def close(got, want, model, scale=None) -> bool:
    """Equal within one reassociated evaluation (module docstring): |Δ| ≤ 2·64·L·ε·scale, scale
    max|want| unless given (the magnitude the differing sums are made of)."""
    got, want = np.asarray(got, dtype=float), np.asarray(want, dtype=float)
    if scale is None:
        scale = np.abs(want).max(initial=0.0)
    return got.shape == want.shape and bool((np.abs(got - want) <= 2 * 64 * model.length_basis * EPS * scale).all())


def scales(model, atoms, results: dict) -> dict:
    """What each result's rounding is made of. Energies: sums over the atoms. Spreads: a spread moves
    by at most the largest move of its members, so the members' magnitudes. γ = max_k |(b A⁻¹)_k| and
    the committee site energies W_k·b: |b|·|A⁻¹| and |W_k|·|b| (b the atom's descriptor row)."""
    n = len(atoms)
    out = {key: n * np.abs(results[key]).max() for key in ("energy", "free_energy", "energy_committee")
           if key in results}
    if "energy_committee" in results:
        out["energy_std"] = out["energy_committee"]
    if "forces_committee" in results:
        out["forces_std"] = np.abs(results["forces_committee"]).max()
    rows = model.descriptors(atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, threads=1)
    if "gamma" in results:
        out["gamma"] = out["max_gamma"] = (np.abs(rows) @ np.abs(model.active_set.inverses["Si"])).max()
    if "energies_std" in results:
        W = np.stack([model.descriptor_weights(t)[0] for t in model.committee])     # one species
        out["energies_std"] = (np.abs(W) @ np.abs(rows).T).max()
    return out


def assert_same_results(got: dict, want: dict, model, atoms):
    assert set(got) == set(want)
    scale = scales(model, atoms, want)
    for key, value in want.items():
        if isinstance(value, np.ndarray):
            assert isinstance(got[key], np.ndarray) and got[key].dtype == value.dtype == np.float64, key
        else:
            assert isinstance(got[key], float) and isinstance(value, float), key
        assert close(got[key], value, model, scale.get(key)), key


def md_run(calc, steps=5):
    """VelocityVerlet from a rattled 16-atom cell with fixed momenta: a copy of the results and the
    calculation count at each observer call."""
    atoms = bulk("Si", cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=3)
    atoms.set_momenta(np.random.default_rng(5).normal(scale=0.5, size=atoms.positions.shape))
    atoms.calc = calc
    seen = []
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dyn.attach(lambda: seen.append((calc.calculations, {k: np.copy(v) if isinstance(v, np.ndarray) else v
                                                         for k, v in calc.results.items()}, atoms.copy())))
    dyn.run(steps)
    return atoms, seen


@pytest.mark.parametrize("binary", [True, False])
def test_md_with_gamma_every_equals_local(server, tiny, binary):
    from aceclient import ACEServerCalculator

    local = local_calculator(tiny, **OPTIONS)
    a_local, seen_local = md_run(local)
    with ACEServerCalculator(server.url, model="tiny", binary=binary, **OPTIONS) as remote:
        a_remote, seen_remote = md_run(remote)
        assert len(seen_remote) == len(seen_local) == 6
        for (n_remote, got, _), (n_local, want, observed) in zip(seen_remote, seen_local):
            assert n_remote == n_local
            # γ on the 1st, 3rd, 5th calculation (index % gamma_every == 0), nowhere else
            assert ("gamma" in want) == ((n_local - 1) % 2 == 0)
            assert {"energy_committee", "energy_std", "energies_std", "forces_committee", "forces_std",
                    "stress"} <= set(want)
            assert want["forces_committee"].shape == (len(tiny.committee), 16, 3)
            assert_same_results(got, want, tiny, observed)
        # 5 steps of 1 fs moved by forces within the bound above: far below 1e-12 Å and Å/fs
        assert np.abs(a_remote.positions - a_local.positions).max() < 1e-12
        assert np.abs(a_remote.get_velocities() - a_local.get_velocities()).max() < 1e-12
        # the last calculation had no γ; asked for by name it is computed there and then
        assert "max_gamma" not in remote.results and "max_gamma" not in local.results
        g_remote = remote.get_property("max_gamma", a_remote)
        g_local = local.get_property("max_gamma", a_local)
        g_scale = scales(tiny, a_local, {"gamma": None})["gamma"]
        assert isinstance(g_remote, float) and close(g_remote, g_local, tiny, g_scale)
        assert close(remote.get_property("gamma", a_remote), local.get_property("gamma", a_local), tiny, g_scale)
        assert remote.calculations == local.calculations == 7


@pytest.mark.parametrize("binary", [True, False])
def test_committee_false_keeps_only_what_was_asked(server, tiny, binary):
    from aceclient import ACEServerCalculator

    atoms = si_structures()[2]
    options = dict(committee=False, committee_forces=True, energies_std=True)
    want = local_calculator(tiny, **options)
    want.get_potential_energy(atoms)
    with ACEServerCalculator(server.url, model="tiny", binary=binary, **options) as remote:
        remote.get_potential_energy(atoms)
        assert "energy_committee" not in remote.results and "forces_std" in remote.results
        assert_same_results(remote.results, want.results, tiny, atoms)
    with ACEServerCalculator(server.url, model="tiny", binary=binary, committee=False) as remote:
        remote.get_potential_energy(atoms)
        plain = local_calculator(tiny, committee=False)
        plain.get_potential_energy(atoms)
        assert set(remote.results) == {"energy", "free_energy", "forces", "stress", "energies"}
        assert_same_results(remote.results, plain.results, tiny, atoms)


@pytest.mark.parametrize("binary", [True, False])
def test_calculate_many_with_gamma_equals_local(server, tiny, binary):
    from aceclient import ACEServerCalculator

    images = si_structures()
    with ACEServerCalculator(server.url, model="tiny", binary=binary, **OPTIONS) as remote:
        many = remote.calculate_many(images)
    assert len(many) == len(images)
    for atoms, got in zip(images, many):
        local = local_calculator(tiny, **OPTIONS)
        local.get_potential_energy(atoms)
        want = dict(local.results)
        assert "gamma" in got and "gamma" in want
        # a batch's γ and energies_std are BLAS products over other row counts
        # (tests/test_many_uncertainty.py): within the cross-process bound of `scales` too
        assert_same_results(got, want, tiny, atoms)


def test_gamma_without_active_set_raises_the_servers_reason(server):
    import aceserver
    from aceclient import ACEServerCalculator, InvalidInputError
    from aceserver.errors import NoActiveSetError

    with pytest.raises(NoActiveSetError):
        aceserver.ACECalculator(str(model_file("si")), gamma=True)
    with pytest.raises(InvalidInputError) as info:
        ACEServerCalculator(server.url, model="si", gamma=True)
    error = info.value
    assert isinstance(error, ValueError)        # as the local NoActiveSetError
    assert error.status == 422 and error.kind == "no_active_set" and error.field == "properties"
    assert "'si' has no active set" in error.message and "aceserver activeset" in error.message
    with ACEServerCalculator(server.url, model="si") as plain:     # without γ the model serves
        assert plain.model_info["gamma_available"] is False
        with pytest.raises(PropertyNotImplementedError):
            plain.get_property("max_gamma", si_structures()[0])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="gamma_every must be a positive integer"):
            ACEServerCalculator(server.url, model="tiny", gamma=True, gamma_every=bad)


def test_gamma_with_a_refused_sidecar_raises_its_reason(server):
    import aceserver
    from aceclient import ACEServerCalculator, InvalidInputError
    from aceserver.errors import NoActiveSetError

    with pytest.raises(NoActiveSetError, match="stale.activeset.npz was built for the model with sha256"):
        aceserver.ACECalculator(str(stale_model()), gamma=True)
    with pytest.raises(InvalidInputError) as info:
        ACEServerCalculator(server.url, model="stale", gamma=True)
    assert info.value.kind == "no_active_set"
    assert "stale.activeset.npz was built for the model with sha256" in info.value.message
    assert str(TMP) not in info.value.message          # the server names no path of its machine


class WarmingServer:
    """A loopback HTTP/1.1 server speaking the calculate API's shape: 503 `not_ready` to the first
    `cold` calculate requests, then a one-atom result (energy -1.5 eV); it records the client port of
    every request (one port: one kept-alive connection)."""

    def __init__(self, cold: int):
        import http.server
        import threading

        import msgpack

        state = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, status, doc):
                data = msgpack.packb(doc, use_bin_type=True)
                self.send_response(status)
                self.send_header("Content-Type", "application/msgpack")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                state.ports.append(self.client_address[1])
                if self.path == "/v1/models":
                    self.reply(200, {"default": "m"})
                else:
                    self.reply(200, {"name": "m", "species": ["Si"], "committee_size": 0, "gamma_available": False})

            def do_POST(self):
                state.ports.append(self.client_address[1])
                self.rfile.read(int(self.headers["Content-Length"]))
                state.posts += 1
                if state.posts <= state.cold:
                    self.reply(503, {"kind": "not_ready", "message": "models are still warming up; retry shortly",
                                     "field": None, "details": []})
                else:
                    zeros = {"dtype": "<f8", "shape": [1, 3], "data": bytes(24)}
                    self.reply(200, {"model": "m", "sha256": "0", "results": [
                        {"energy": -1.5, "free_energy": -1.5, "forces": zeros,
                         "energies": {"dtype": "<f8", "shape": [1], "data": np.array([-1.5]).tobytes()}}]})

        self.cold, self.posts, self.ports = cold, 0, []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_retries_while_the_server_warms_up_on_one_connection():
    from ase import Atoms

    from aceclient import ACEServerCalculator, ServerNotReadyError

    server = WarmingServer(cold=2)
    try:
        atoms = Atoms("Si", positions=[[0, 0, 0]])
        with ACEServerCalculator(server.url, ready_timeout=30) as calc:
            assert calc.get_potential_energy(atoms) == -1.5
            assert server.posts == 3 and len(server.ports) == 5 and len(set(server.ports)) == 1
        server.posts = 0
        with ACEServerCalculator(server.url, ready_timeout=0) as calc:
            with pytest.raises(ServerNotReadyError, match="warming up"):
                calc.get_potential_energy(atoms)
            assert server.posts == 1
    finally:
        server.close()
