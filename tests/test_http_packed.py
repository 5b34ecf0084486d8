"""The packed batch form (`serving/http/packed.py`): the same numbers as the same structures sent as
`structures`, bit for bit (the reference: the existing path, JSON and msgpack), and its refusals
(sizes, truncated bytes, NaN, counts that do not add up, unknown elements, evaluator errors) with
the error document of the failing structure by index, the one the `structures` form gives.

Most tests call the route's worker function (`evaluate_body`) in process; one runs `aceclient`
against a real server, packed (msgpack) against JSON."""
from __future__ import annotations

import msgpack
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from _http_support import make_model, shared_server, si_structures
from aceclient.calculator import _pack_array, packed_batch, structure, unpack_results
from aceserver.serving.http import codec
from aceserver.serving.http.error_replies import APIError
from aceserver.serving.http.registry import ServedModel
from aceserver.serving.http.routers.calculate import evaluate_body
from aceserver.serving.http.settings import Settings

pytestmark = pytest.mark.timeout(300)
MP = codec.MSGPACK


@pytest.fixture(scope="module")
def served():
    return ServedModel("sic", make_model(committee=4, seed=1))


def packed_map(images):
    return packed_batch(images)


def post(served, doc, codec_in=MP, codec_out=MP, settings=None):
    body = msgpack.packb(doc, use_bin_type=True) if codec_in == MP else codec.encode(doc, codec.JSON)
    out, *_ = evaluate_body(served, body, codec_in, codec_out, settings or Settings())
    return codec.unpack_arrays(msgpack.unpackb(out)) if codec_out == MP else __import__("json").loads(out)


def error(served, doc, codec_in=MP, codec_out=MP, settings=None) -> APIError:
    with pytest.raises(APIError) as info:
        post(served, doc, codec_in, codec_out, settings)
    return info.value


def mixed():
    """Periodic crystals of 2-64 atoms, a slab, a cluster, and 1-atom cells smaller than the cutoff."""
    rng = np.random.default_rng(3)
    small = [Atoms("Si", positions=[[0, 0, 0]], cell=np.eye(3) * 2.6 + rng.normal(scale=0.1, size=(3, 3)), pbc=True)
             for _ in range(3)]
    big = bulk("Si", cubic=True).repeat(3)          # 216 atoms: evaluated on its own, not packed
    big.rattle(0.05, seed=2)
    return si_structures() + small + [big]


@pytest.mark.parametrize("properties", [None, ["energy", "stress"], ["energy", "forces", "forces_committee", "virial"],
                                        ["forces_std", "energies"]])
def test_packed_gives_the_structures_numbers_bit_for_bit(served, properties):
    images = mixed()
    extra = {} if properties is None else {"properties": properties}
    got = post(served, {"packed": packed_map(images), **extra})["packed"]
    for fmt, codec_in in (("msgpack", MP), ("json", codec.JSON)):
        ref = post(served, {"structures": [structure(a, fmt == "msgpack") for a in images], **extra},
                   codec_in, codec_in)["results"]
        ref = [{k: v for k, v in r.items() if v is not None} for r in ref]
        assert np.array_equal(got["counts"], [len(a) for a in images])
        mine = unpack_results(got, np.array([len(a) for a in images]))
        for k, (a, b) in enumerate(zip(mine, ref)):
            if "virial" in got:
                a["virial"] = got["virial"][k]
            assert set(a) == set(b), (k, set(a) ^ set(b))
            for key in a:
                assert np.array_equal(np.asarray(a[key], dtype=float), np.asarray(b[key], dtype=float)), (fmt, k, key)
    if properties is None or "stress" in properties:
        assert np.isnan(got["stress"][-5]).all() and np.isnan(got["stress"][-6]).all()   # cluster, slab


def test_refusals_of_sizes_and_bytes(served):
    images = mixed()
    base = packed_map(images)
    n = sum(len(a) for a in images)

    def with_(**fields):
        return {"packed": {**base, **fields}}

    e = error(served, with_(counts=_pack_array([len(a) for a in images[:-1]] + [len(images[-1]) + 1], "<i8")))
    assert (e.status, e.field) == (422, "packed.counts") and f"add up to {n + 1}" in e.message
    e = error(served, with_(positions=_pack_array(np.zeros((n, 2)), "<f8")))
    assert (e.status, e.field) == (422, "packed.positions") and "(n, 3)" in e.message
    e = error(served, with_(cells=_pack_array(np.zeros((len(images), 3)), "<f8")))
    assert (e.status, e.field) == (422, "packed.cells")
    e = error(served, with_(numbers=_pack_array(np.full(n, 14.0), "<f8")))
    assert (e.status, e.field) == (422, "packed.numbers") and "dtype" in e.message
    e = error(served, with_(positions=np.zeros((n, 3)).tolist()))
    assert (e.status, e.field) == (422, "packed.positions") and "array map" in e.message
    counts = [len(a) for a in images]
    counts[2] = 0
    e = error(served, with_(counts=_pack_array(counts, "<i8")))
    assert (e.status, e.field) == (422, "structures[2].positions")
    e = error(served, with_(), settings=Settings(max_structures=len(images) - 1))
    assert (e.status, e.kind, e.field) == (413, "too_large", "packed.counts")
    e = error(served, with_(), settings=Settings(max_atoms=63))
    assert (e.status, e.kind, e.field) == (413, "too_large", "structures[4].positions")
    e = error(served, {"packed": {**base, "momenta": base["positions"]}})
    assert (e.status, e.field) == (422, "packed") and "momenta" in e.message
    e = error(served, {"packed": {k: v for k, v in base.items() if k != "numbers"}})
    assert e.field == "packed.numbers"
    truncated = dict(base["positions"], data=base["positions"]["data"][:-8])
    e = error(served, with_(positions=truncated))
    assert (e.status, e.kind) == (400, "malformed_body") and "bytes" in e.message
    body = msgpack.packb({"packed": base}, use_bin_type=True)
    with pytest.raises(APIError) as info:
        evaluate_body(served, body[:-5], MP, MP, Settings())
    assert info.value.status == 400
    e = error(served, {"packed": base}, codec_out=codec.JSON)
    assert e.status == 422 and "msgpack" in e.message
    e = error(served, {"packed": base, "properties": ["energy", "max_gamma"]})
    assert e.status == 422 and e.field == "properties"


def test_refusals_by_index_match_the_structures_form(served):
    """A bad structure in the batch: the packed reply is the `structures` reply's error document
    where the schema checks in both (the first failing index, its field); NaN and out-of-range
    values name the structure, the atom and the component."""
    images = mixed()
    # NaN in structure 3, atom 5, y
    bad = [a.copy() for a in images]
    bad[3].positions[5, 1] = np.nan
    e = error(served, {"packed": packed_map(bad)})
    assert (e.status, e.kind, e.field) == (422, "invalid_input", "structures[3].positions[5][1]")
    bad[6].positions[0, 0] = 2e6
    bad[1].cell[2, 2] = np.inf
    e = error(served, {"packed": packed_map(bad)})
    assert e.field == "structures[1].cell[2][2]" and len(e.details) == 3 and "2 more problems" in e.message
    assert [d["field"] for d in e.details] == ["structures[1].cell[2][2]", "structures[3].positions[5][1]",
                                               "structures[6].positions[0][0]"]
    # unknown element, atoms on top of each other: the very document of the structures form
    for k, change in ((5, lambda a: a.numbers.__setitem__(2, 6)),
                      (2, lambda a: a.positions.__setitem__(3, a.positions[1]))):
        bad = [a.copy() for a in images]
        change(bad[k])
        e = error(served, {"packed": packed_map(bad)})
        ref = error(served, {"structures": [structure(a, True) for a in bad]})
        assert e.body() == ref.body() and e.status == ref.status and e.field.startswith(f"structures[{k}]")
    bad = [a.copy() for a in images]
    bad[4].numbers[0] = 119
    e = error(served, {"packed": packed_map(bad)})
    assert (e.status, e.field) == (422, "structures[4].numbers[0]") and "119" in e.message


def test_client_calculate_many_packed_equals_json():
    from aceclient import ACEServerCalculator

    server = shared_server()
    images = mixed()
    with ACEServerCalculator(server.url, model="sic") as binary, \
            ACEServerCalculator(server.url, model="sic", binary=False) as text:
        packed, plain = binary.calculate_many(images), text.calculate_many(images)
    assert len(packed) == len(plain) == len(images)
    for a, b in zip(packed, plain):
        assert set(a) == set(b)
        for key in a:
            assert np.array_equal(a[key], b[key]), key
