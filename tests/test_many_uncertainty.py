"""`evaluate_many(gamma=..., energies_committee=..., descriptors=...)` against per-structure
`evaluate(gamma=True, energies_committee=True)` and `descriptors` (the reference), for mixed sizes,
two species, clusters, cells smaller than the cut-off, isolated atoms, empty structures, a `.yace`
potential, bad structures in the batch, threads; the HTTP batch against per-structure replies.

Exactness. Energies, forces, virials and the descriptor rows are bit for bit (the same kernels on
the same pairs: `many_uncertainty`). γ = max_k |(b A⁻¹)_k| and the committee site energies
E0 + W_k·b are BLAS products whose summation order may depend on the number of rows in one product
(gemv for a one-atom structure, blocked gemm for a chunk), so they are compared within the
rounding bound of an L-term dot product computed in two orders: each order is within
γ_L·(|b|·|M|)_k of the exact value (γ_L = L·u/(1 - L·u), u = 2⁻⁵³, with or without FMA), so

    |Δγ| ≤ max_k |Δ(b A⁻¹)_k| ≤ 2·γ_L·max_k (|b|·|A⁻¹|)_k,
    |ΔE_k| ≤ 2·γ_L·(|W_k|·|b|) + 2u·|E_k|        (the E0 add rounds once more on each side),
    |Δ energies_std| ≤ max_k |ΔE_k| + 4·K·u·max_k |E_k|   (the population std is 1-Lipschitz in
                                                          the max norm; its own rounding on top).

These hold on any CPU and any thread count.
"""
import threading

import numpy as np
import pytest
from ase import Atoms
from fastapi.testclient import TestClient

import aceserver
from aceserver.errors import BatchError, NoActiveSetError
from aceserver.evaluation import many
from aceserver.fitting.active_set_build import build_active_set
from test_evaluate_many import CU_PACE, SI_TINY, TIAL, mixed, random_cell

U = 2.0 ** -53


@pytest.fixture(scope="module")
def si():
    m = aceserver.load_model(SI_TINY)
    assert m.active_set is not None and m.committee is not None
    return m


@pytest.fixture(scope="module")
def tial():
    m = aceserver.load_model(TIAL)
    assert set(m.active_set.inverses) == {"Ti", "Al"} and m.committee is not None
    return m


def gamma_L(L):
    return L * U / (1 - L * U)


def reference(model, a):
    ev = model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, threads=1, gamma=model.active_set is not None,
                        energies_committee=True)
    return ev, model.descriptors(a.numbers, a.positions, a.cell.array, a.pbc, threads=1)


def assert_close(model, got, want, rows, numbers):
    """got (evaluate_many) against want (evaluate) for one structure; rows: its descriptors."""
    assert got.pairs == want.pairs and got.energy == want.energy
    assert np.array_equal(got.forces, want.forces) and np.array_equal(got.virial, want.virial)
    assert np.array_equal(got.energies, want.energies)
    assert got.descriptors is not None and got.descriptors.shape == rows.shape
    assert np.array_equal(got.descriptors, rows)
    sizes = [model.descriptor_sizes[el] for el in model.elements]
    species = model._lookup[np.asarray(numbers, dtype=np.int64)]
    if want.gamma is None:
        assert got.gamma is None
    else:
        assert got.gamma.shape == want.gamma.shape
        for i, s in enumerate(species):
            L = sizes[s]
            A_inv = model.active_set.inverses[model.elements[s]]
            bound = 2 * gamma_L(L) * (np.abs(rows[i, :L]) @ np.abs(A_inv)).max()
            assert abs(got.gamma[i] - want.gamma[i]) <= bound, (i, got.gamma[i], want.gamma[i], bound)
        assert got.max_gamma == pytest.approx(want.max_gamma, abs=max(
            [2 * gamma_L(sizes[s]) * (np.abs(rows[i, :sizes[s]]) @ np.abs(
                model.active_set.inverses[model.elements[s]])).max() for i, s in enumerate(species)] + [0.0]))
    if want.energies_committee is None:
        assert got.energies_committee is None
        return
    W = np.stack([model.descriptor_weights(t) for t in model.committee])       # (K, nz, L)
    E = want.energies_committee
    assert got.energies_committee.shape == E.shape
    for i, s in enumerate(species):
        L = sizes[s]
        bound = 2 * gamma_L(L) * (np.abs(W[:, s, :L]) @ np.abs(rows[i, :L])) + 2 * U * np.abs(E[:, i])
        assert (np.abs(got.energies_committee[:, i] - E[:, i]) <= bound).all(), i
        K = len(E)
        std_bound = bound.max() + 4 * K * U * np.abs(E[:, i]).max()
        assert abs(got.energies_std[i] - want.energies_std[i]) <= std_bound


def check_batch(model, structures, threads=1, **kw):
    got = model.evaluate_many(structures, threads=threads, gamma=model.active_set is not None,
                              energies_committee=True, descriptors=True, **kw)
    assert len(got) == len(structures)
    for a, r in zip(structures, got):
        want, rows = reference(model, a)
        assert_close(model, r, want, rows, a.numbers)
    return got


@pytest.mark.parametrize("name", ["si", "tial"])
def test_matches_evaluate(name, request):
    """Mixed sizes (1-8 atoms and one above BATCH_MAX_ATOMS), both species, every periodicity,
    cells much smaller than the cut-off, skewed cells, slabs, wires, isolated atoms, empty shells,
    an empty structure and a cluster (`test_evaluate_many.mixed`), serial and on two threads."""
    model = request.getfixturevalue(name)
    structures = mixed(model, seed=11, count=80)
    for threads in (1, 2):
        check_batch(model, structures, threads)


def test_blocks_and_chunks(si, monkeypatch):
    """Rows made in blocks that cut the batch anywhere (tiny blocks and chunks) give the same."""
    structures = mixed(si, seed=12, count=40)
    monkeypatch.setattr("aceserver.evaluation.many_uncertainty.BLOCK_ATOMS", 7)
    monkeypatch.setattr(many, "CHUNK_ATOMS", 50)
    got = check_batch(si, structures, threads=2, committee=True)     # with the committee's per-structure sums
    for a, r in zip(structures, got):
        want = si.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, threads=1, committee=True)
        assert np.array_equal(r.energy_committee, want.energy_committee)


def test_rows_pass_of_its_own(si, monkeypatch):
    """Tables the site pass cannot write rows from: the rows pass of its own gives the same."""
    monkeypatch.setattr(type(si), "_descriptor_tables", lambda self, tables: None)
    check_batch(si, mixed(si, seed=13, count=30))


def test_packed_matches(tial):
    structures = [a for a in mixed(tial, seed=14, count=30) if len(a)]
    counts = [len(a) for a in structures]
    got = tial.evaluate_packed(counts, np.concatenate([a.numbers for a in structures]),
                               np.concatenate([a.positions for a in structures]),
                               np.stack([a.cell.array for a in structures]), np.stack([a.pbc for a in structures]),
                               threads=1, gamma=True, energies_committee=True, descriptors=True)
    for a, r in zip(structures, got):
        want, rows = reference(tial, a)
        assert_close(tial, r, want, rows, a.numbers)


@pytest.fixture(scope="module")
def cu():
    """Cu-PBE-core-rep.yace (tests/data) with an active set built here from a few small cells
    (floor rows complete its 1484 columns: `fitting.active_set_build`)."""
    model = aceserver.load_model(CU_PACE)
    rng = np.random.default_rng(21)
    frames = [Atoms("Cu" * n, positions=rng.random((n, 3)) @ c, cell=c, pbc=True)
              for n in (2, 3, 4) for c in [random_cell(rng, n, 11.8, skew=0.1)]]
    model.attach_active_set(build_active_set(model, frames).inverses(), model.sha256)
    return model


def test_pacemaker_matches(cu):
    rng = np.random.default_rng(22)
    structures = [Atoms("Cu" * n, positions=rng.random((n, 3)) @ c, cell=c, pbc=p)
                  for n, c, p in [(1, random_cell(rng, 1, 11.8), True), (2, random_cell(rng, 2, 11.8), True),
                                  (3, random_cell(rng, 3, 11.8), [True, False, True]),
                                  (2, random_cell(rng, 2, 11.8), False)]]
    structures.append(Atoms("Cu", positions=[[0, 0, 0]]))                  # isolated
    for threads in (1, 2):
        got = check_batch(cu, structures, threads)
    assert all(r.energies_committee is None for r in got)                  # no committee


def test_bad_structures_by_index(tial):
    """A structure that fails (atoms on top of each other; an element the active set lacks) is
    reported by index with evaluate's error; the others keep their γ."""
    structures = mixed(tial, seed=15, count=12)
    structures[3] = Atoms("Ti2", positions=[[0, 0, 0], [0, 0, 0]])
    with pytest.raises(BatchError) as info:
        tial.evaluate_many(structures, threads=1, gamma=True, energies_committee=True)
    assert set(info.value.errors) == {3} and "on top of each other" in str(info.value.errors[3])
    for k, (a, r) in enumerate(zip(structures, info.value.results)):
        if k != 3:
            want, rows = reference(tial, a)
            r.descriptors = rows          # not asked for here
            assert_close(tial, r, want, rows, a.numbers)
    # an active set with Ti only: structures with Al fail as evaluate fails them, Ti-only ones pass
    ti_only = aceserver.load_model(TIAL, active_set=False)
    ti_only.attach_active_set({"Ti": tial.active_set.inverses["Ti"]})
    batch = [Atoms("Ti2", positions=[[0, 0, 0], [2.5, 0, 0]]), Atoms("TiAl", positions=[[0, 0, 0], [2.6, 0, 0]]),
             Atoms("Ti", positions=[[0, 0, 0]], cell=np.eye(3) * 2.9, pbc=True)]
    with pytest.raises(BatchError) as info:
        ti_only.evaluate_many(batch, gamma=True)
    assert set(info.value.errors) == {1}
    with pytest.raises(NoActiveSetError) as single:
        ti_only.evaluate(batch[1].numbers, batch[1].positions, gamma=True)
    assert type(info.value.errors[1]) is NoActiveSetError and str(info.value.errors[1]) == str(single.value)
    for k in (0, 2):
        a = batch[k]
        want = ti_only.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, gamma=True)
        assert info.value.results[k].gamma.shape == want.gamma.shape
        assert np.allclose(info.value.results[k].gamma, want.gamma, rtol=1e-12, atol=0)


def test_no_active_set_error():
    plain = aceserver.load_model(SI_TINY, active_set=False)
    a = Atoms("Si2", positions=[[0, 0, 0], [2.3, 0, 0]])
    with pytest.raises(NoActiveSetError) as single:
        plain.evaluate(a.numbers, a.positions, gamma=True)
    for call in (lambda: plain.evaluate_many([a, a], gamma=True),
                 lambda: plain.evaluate_packed([2], a.numbers, a.positions, np.zeros((1, 3, 3)),
                                               np.zeros((1, 3), bool), gamma=True)):
        with pytest.raises(NoActiveSetError) as batch:
            call()
        assert str(batch.value) == str(single.value)
    # energies_committee without a committee: None, as evaluate gives
    cu = aceserver.load_model(CU_PACE)
    assert cu.evaluate_many([Atoms("Cu", positions=[[0, 0, 0]])], energies_committee=True)[0].energies_committee is None


def test_cancel_between_chunks(si):
    done = threading.Event()
    done.set()
    with pytest.raises(aceserver.errors.EvaluationCancelled):
        si.evaluate_many(mixed(si, count=5), gamma=True, cancel=done)


HTTP_PROPERTIES = ["energy", "forces", "stress", "energies", "committee", "energies_std", "gamma", "max_gamma",
                   "descriptors"]


def http_post(served, doc, settings=None):
    import msgpack
    from aceserver.serving.http import codec
    from aceserver.serving.http.routers.calculate import evaluate_body
    from aceserver.serving.http.settings import Settings
    body = msgpack.packb(doc, use_bin_type=True)
    out, *_ = evaluate_body(served, body, codec.MSGPACK, codec.MSGPACK, settings or Settings())
    return codec.unpack_arrays(msgpack.unpackb(out))


def assert_reply_close(model, got: dict, want: dict, numbers):
    """An HTTP result (batch) against the per-structure one: equal but for γ and energies_std,
    which are within the bounds of the module docstring (rows: the reply's descriptors)."""
    assert set(got) == set(want)
    rows = np.asarray(want["descriptors"])
    for key in want:
        if key not in ("gamma", "max_gamma", "energies_std"):
            assert np.array_equal(np.asarray(got[key], dtype=float), np.asarray(want[key], dtype=float),
                                  equal_nan=want[key] is None), key
    species = model._lookup[np.asarray(numbers)]
    sizes = [model.descriptor_sizes[el] for el in model.elements]
    gb = np.array([2 * gamma_L(sizes[s]) * (np.abs(rows[i, :sizes[s]]) @ np.abs(
        model.active_set.inverses[model.elements[s]])).max() for i, s in enumerate(species)])
    assert (np.abs(np.asarray(got["gamma"]) - np.asarray(want["gamma"])) <= gb).all()
    assert abs(got["max_gamma"] - want["max_gamma"]) <= gb.max(initial=0.0)
    W = np.stack([model.descriptor_weights(t) for t in model.committee])
    e0 = np.array([model.E0[el] for el in model.elements])
    E = np.stack([W[:, s, :sizes[s]] @ rows[i, :sizes[s]] + e0[s] for i, s in enumerate(species)], axis=1)
    K = len(W)
    eb = np.array([(2 * gamma_L(sizes[s]) * (np.abs(W[:, s, :sizes[s]]) @ np.abs(rows[i, :sizes[s]]))
                    + 2 * U * np.abs(E[:, i])).max() + 4 * K * U * np.abs(E[:, i]).max()
                   for i, s in enumerate(species)])
    assert (np.abs(np.asarray(got["energies_std"]) - np.asarray(want["energies_std"])) <= eb).all()


def test_http_batch_matches_per_structure(si):
    """`structures` (one evaluate_many call under the request's pair budget) and the packed form
    against each structure sent on its own (`evaluate`, `descriptors`)."""
    from aceclient.calculator import packed_batch, structure, unpack_results
    from aceserver.serving.http.registry import ServedModel
    served = ServedModel("si", si)
    structures = [a for a in mixed(si, seed=16, count=24) if len(a)]
    one = [http_post(served, {"structure": structure(a, True), "properties": HTTP_PROPERTIES})["results"][0]
           for a in structures]
    batch = http_post(served, {"structures": [structure(a, True) for a in structures],
                               "properties": HTTP_PROPERTIES})["results"]
    reply = http_post(served, {"packed": packed_batch(structures), "properties": HTTP_PROPERTIES})["packed"]
    assert reply["gamma"].shape == (sum(map(len, structures)),) and reply["max_gamma"].shape == (len(structures),)
    assert reply["descriptors"].shape == (sum(map(len, structures)), si.descriptor_sizes["Si"])
    packed = unpack_results(reply, np.array([len(a) for a in structures]))
    for a, o, b, p in zip(structures, one, batch, packed):
        assert_reply_close(si, b, o, a.numbers)
        o = {k: v for k, v in o.items() if k not in ("free_energy", "stress", "energy_committee", "energy_std")}
        p = {k: v for k, v in p.items() if k not in ("free_energy", "stress", "energy_committee", "energy_std")}
        assert_reply_close(si, p, o, a.numbers)
    # the same limits: descriptors of the whole request, and errors by index
    from aceserver.serving.http.error_replies import APIError
    from aceserver.serving.http.settings import Settings
    atoms = sum(map(len, structures))
    small = Settings(max_descriptor_values=atoms * si.descriptor_sizes["Si"] - 1)
    for doc in ({"structures": [structure(a, True) for a in structures]}, {"packed": packed_batch(structures)}):
        with pytest.raises(APIError) as info:
            http_post(served, {**doc, "properties": ["descriptors"]}, small)
        assert info.value.status == 413 and "max-descriptor-values" in info.value.message
    bad = list(structures)
    bad[2] = Atoms("Si2", positions=[[0, 0, 0], [0, 0, 0]])
    errors = []
    for doc in ({"structures": [structure(a, True) for a in bad]}, {"packed": packed_batch(bad)}):
        with pytest.raises(APIError) as info:
            http_post(served, {**doc, "properties": ["gamma"]})
        errors.append((info.value.status, info.value.field, info.value.message))
    assert errors[0] == errors[1] and errors[0][1].startswith("structures[2]") and "on top" in errors[0][2]


def test_openapi_describes_the_packed_batch(si):
    """/openapi.json names the packed body and reply: their fields, dtypes, shapes and units."""
    from aceserver.serving.http.app import create_app
    from aceserver.serving.http.registry import ModelRegistry, ServedModel
    from aceserver.serving.http.settings import Settings
    with TestClient(create_app(ModelRegistry([ServedModel("si", si)]), Settings())) as client:
        spec = client.get("/openapi.json").json()
    calc = spec["paths"]["/v1/models/{name}/calculate"]["post"]
    body = calc["requestBody"]["content"]["application/msgpack"]["schema"]
    assert {"$ref": "#/components/schemas/PackedRequest"} in body["oneOf"]
    assert {"$ref": "#/components/schemas/CalculateRequest"} in body["oneOf"]
    reply = calc["responses"]["200"]["content"]["application/msgpack"]["schema"]
    assert {"$ref": "#/components/schemas/PackedResponse"} in reply["oneOf"]
    schemas = spec["components"]["schemas"]
    assert schemas["PackedRequest"]["properties"]["packed"] == {"$ref": "#/components/schemas/PackedStructures"}
    fields = schemas["PackedStructures"]["properties"]
    assert set(fields) == {"counts", "numbers", "positions", "cells", "pbc"}
    assert set(schemas["PackedStructures"]["required"]) == {"counts", "numbers", "positions"}
    assert fields["positions"]["x-dtype"] == ["<f8"] and fields["positions"]["x-shape"] == "(N, 3)"
    assert "Å" in fields["positions"]["description"] and "Å" in fields["cells"]["description"]
    assert fields["counts"]["x-dtype"] == ["<i8", "<i4"] and fields["pbc"]["x-dtype"] == ["|b1"]
    out = schemas["PackedResponse"]["properties"]["packed"]
    assert out == {"$ref": "#/components/schemas/PackedResults"}
    results = schemas["PackedResults"]["properties"]
    for field, unit, shape in [("energy", "eV", "(S,)"), ("forces", "eV/Å", "(N, 3)"), ("stress", "eV/Å³", "(S, 6)"),
                               ("virial", "eV", "(S, 3, 3)"), ("energies_std", "eV", "(N,)"),
                               ("gamma", "dimensionless", "(N,)"), ("max_gamma", "dimensionless", "(S,)")]:
        assert unit in results[field]["description"] and results[field]["x-shape"] == shape, field
    assert {"dtype", "shape", "data"} == set(schemas["MsgpackArray"]["required"])
    assert "Property" in schemas            # the properties list refers to it


def test_pieces_on_threads(si, monkeypatch):
    """Threaded chunks cut into pieces (`many._Run.pieces`, forced here on a small batch): γ,
    committee site energies and descriptor rows as `evaluate` gives them, as on one thread."""
    monkeypatch.setattr(many, "THREADS_MIN_ATOMS", 4)
    cuts = []
    real = many._Run.run_pieces
    monkeypatch.setattr(many._Run, "run_pieces",
                        lambda self, piece, c: (cuts.append(c), real(self, piece, c)))
    check_batch(si, mixed(si, seed=16, count=30), threads=2)
    assert cuts and len(cuts[0]) >= 3
