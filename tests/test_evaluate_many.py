"""`evaluate_many` against per-structure `evaluate` (the reference): mixed sizes, species and
periodicities, cells much smaller than the cut-off, skewed cells, clusters, isolated atoms,
empty structures; errors reported by index; threads.

Exactness: bit for bit. The batched search runs the per-structure search's plan and kernels
(`test_batched_search_is_neighbour_list`: the same pairs in the same order, the same bits), the
packed pass is the serial pass site by site (`test_packed_pass_is_evaluate_bit_for_bit`), and
the structures evaluated one by one are `evaluate` itself; so every number must be equal, not
close, and on any CPU (both sides run the same compiled code on the same inputs).
"""
import itertools
import threading

import numpy as np
import pytest
from ase import Atoms

import aceserver
from aceserver.errors import (ACEInputError, BatchError, EvaluationCancelled, TooManyPairsError,
                              UnknownElementError)
from aceserver.evaluation import many
from aceserver.kernels.batch_pass import many_pass
from aceserver.kernels.neighbours import min_distance, neighbour_list

SI_TINY = "models/Si-tiny/Si-tiny.json"
TIAL = "models/TiAl-tutorial/TiAl-tutorial.json"
CU_PACE = "tests/data/Cu-PBE-core-rep.yace"


@pytest.fixture(scope="module")
def si():
    return aceserver.load_model(SI_TINY)


@pytest.fixture(scope="module")
def tial():
    return aceserver.load_model(TIAL)


def random_cell(rng, n, volume_per_atom, skew=0.3):
    while True:
        c = np.eye(3) + rng.normal(size=(3, 3)) * skew
        v = abs(np.linalg.det(c))
        if v > 0.3:
            return c * (volume_per_atom * n / v) ** (1 / 3)


def mixed(model, seed=0, count=120, vpa=17.0):
    """Structures of every kind the batch must handle (see the module docstring)."""
    from ase.data import atomic_numbers
    rng = np.random.default_rng(seed)
    Z = [atomic_numbers[e] for e in model.elements]
    patterns = list(itertools.product([False, True], repeat=3))
    out = []
    for k in range(count):
        n = int(rng.integers(1, 9))
        c = random_cell(rng, n, vpa)
        pos = rng.random((n, 3)) @ c + rng.integers(-3, 4, size=(n, 3)) @ c   # not wrapped
        out.append(Atoms(numbers=rng.choice(Z, n), positions=pos, cell=c, pbc=patterns[k % 8]))
    # a cell much smaller than the cut-off; a skewed one (reduced in the kernel); a slab, a wire
    out.append(Atoms(numbers=[Z[0]], positions=[[0.1, 0.2, 0.3]], cell=np.eye(3) * 2.3, pbc=True))
    a = 2.6
    out.append(Atoms(numbers=[Z[-1]] * 2, positions=[[0, 0, 0], [1.2, 1.3, 1.1]],
                     cell=[[a, 0, 0], [4 * a, a, 0], [-3 * a, 2 * a, a]], pbc=True))
    out.append(Atoms(numbers=[Z[0]] * 2, positions=[[0, 0, 0], [1.5, 1.5, 1.0]],
                     cell=[[2.7, 0, 0], [0.4, 2.9, 0], [0, 0, 0]], pbc=[True, True, False]))
    out.append(Atoms(numbers=[Z[0]], positions=[[0, 0, 0]], cell=[[0, 0, 0], [0, 0, 0], [0, 0, 2.4]],
                     pbc=[False, False, True]))
    # an isolated atom, atoms with empty neighbour shells, an empty structure, a small cluster
    out.append(Atoms(numbers=[Z[0]], positions=[[5.0, 5.0, 5.0]]))
    out.append(Atoms(numbers=[Z[0], Z[-1]], positions=[[0, 0, 0], [0, 0, 12.0]]))
    out.append(Atoms(numbers=[], positions=np.zeros((0, 3)), cell=np.eye(3) * 3.0, pbc=True))
    out.append(Atoms(numbers=[Z[0]] * 4, positions=[[0, 0, 0], [2.3, 0, 0], [0, 2.4, 0], [0, 0, 2.2]]))
    # larger than BATCH_MAX_ATOMS: evaluated one by one
    n = many.BATCH_MAX_ATOMS + 6
    c = random_cell(rng, n, vpa, skew=0.05)
    out.append(Atoms(numbers=rng.choice(Z, n), positions=rng.random((n, 3)) @ c, cell=c, pbc=True))
    return out


def ev(model, a, **kw):
    return model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, threads=1, **kw)


def assert_same(got, want):
    assert got.pairs == want.pairs
    assert got.energy == want.energy
    for name in ("forces", "virial", "energies", "energy_committee", "forces_committee"):
        g, w = getattr(got, name), getattr(want, name)
        assert (g is None) == (w is None), name
        if w is not None:
            assert g.shape == w.shape and np.array_equal(g, w), name


@pytest.mark.parametrize("name", ["si", "tial"])
def test_matches_evaluate(name, request):
    model = request.getfixturevalue(name)
    structures = mixed(model)
    got = model.evaluate_many(structures, threads=1, committee=True)
    assert len(got) == len(structures)
    for a, r in zip(structures, got):
        assert_same(r, ev(model, a, committee=True))


def test_pacemaker_matches_evaluate():
    model = aceserver.load_model(CU_PACE)
    rng = np.random.default_rng(5)
    structures = [Atoms("Cu" * n, positions=rng.random((n, 3)) @ c, cell=c, pbc=p)
                  for n, c, p in [(1, random_cell(rng, 1, 11.8), True), (2, random_cell(rng, 2, 11.8), True),
                                  (3, random_cell(rng, 3, 11.8), [True, False, True]),
                                  (2, random_cell(rng, 2, 11.8), False)]]
    for threads in (1, None):
        for a, r in zip(structures, model.evaluate_many(structures, threads=threads)):
            assert_same(r, ev(model, a))
    with pytest.raises(ACEInputError, match="no committee"):
        model.evaluate_many(structures, committee_forces=True)


def test_packed_pass_is_evaluate_bit_for_bit(si):
    """The packed site pass and scatter on the per-structure neighbour lists: evaluate's bits,
    in one range and in several, committee energies included."""
    structures = mixed(si, seed=3, count=40)
    lists = [si._neighbours(a.numbers, a.positions, a.cell.array, a.pbc) for a in structures]
    offsets = np.cumsum([0] + [len(z) for z, *_ in lists])
    pair_offsets = np.cumsum([0] + [len(nbr) for _, _, nbr, _ in lists])
    first = np.concatenate([[0]] + [f[1:] + p for (_, f, _, _), p in zip(lists, pair_offsets)])
    nbr = np.concatenate([n + o for (_, _, n, _), o in zip(lists, offsets)])
    R = np.concatenate([r for *_, r in lists])
    z = np.concatenate([zz for zz, *_ in lists])
    for bounds in (None, np.array([0, 5, 5, 17, 30, len(structures)])):
        E, _, F, W, committee = many_pass(offsets, first, nbr, R, z, si._tables(True), True, bounds)
        for s, a in enumerate(structures):
            want = ev(si, a, committee=True)
            atoms = slice(offsets[s], offsets[s + 1])
            assert np.array_equal(E[0, atoms], want.energies)
            assert float(E[0, atoms].sum()) == want.energy
            assert np.array_equal(F[atoms], want.forces)
            assert np.array_equal(0.5 * (W[s] + W[s].T), want.virial)
            assert np.array_equal(committee[s], want.energy_committee)


def test_batched_search_is_neighbour_list(si, monkeypatch):
    """The binning bases of all cells at once are `binning_basis`'s, the lattice reduction
    `_reduce_lattice`'s, and the packed lists `neighbour_list(sort=False)`'s (its plan in Python
    and five kernel calls, as for large structures), bit for bit; so are neighbour_list's own
    one-call lists of small structures."""
    from aceserver.kernels import batch_neighbours as BN
    from aceserver.kernels import neighbours
    from aceserver.kernels.lattice import _reduce_lattice, binning_basis
    structures = mixed(si, seed=4, count=160)[:-1]
    rng = np.random.default_rng(4)
    for k in range(0, len(structures), 5):    # very skewed cells: several reduction steps
        c = structures[k].cell.array @ (np.eye(3) + np.triu(rng.integers(-4, 5, (3, 3)), 1))
        structures[k].set_cell(c)
    pos = np.concatenate([a.positions for a in structures])
    offsets = np.cumsum([0] + [len(a) for a in structures])
    cells = np.array([a.cell.array for a in structures])
    pbc = np.array([a.pbc for a in structures])
    vecs = rng.normal(size=(200, 3, 3)) @ np.triu(rng.integers(-5, 6, (3, 3)), 1) + rng.normal(size=(200, 3, 3))
    for v, T in zip(vecs, BN.reduce_many(vecs)):
        assert np.array_equal(T, _reduce_lattice(v))
    basis, inv_basis, recip, ok = BN.bases(cells, pbc)
    assert ok.all()
    for s, a in enumerate(structures):
        b, _, ib, r = binning_basis(a.cell.array.copy(), a.pbc.copy())
        assert np.array_equal(b, basis[s]) and np.array_equal(ib, inv_basis[s])
        assert np.array_equal(r, recip[s])
    status = np.zeros(len(structures), dtype=np.int64)
    first, nbr, R, closest = BN.search(pos, offsets, status, basis, inv_basis, recip, pbc,
                                       si.rcut, 64, 10**8, 20000)
    assert (status == 0).all()
    one_call = [neighbour_list(a.positions, a.cell.array, a.pbc, si.rcut, sort=False)
                for a in structures]
    monkeypatch.setattr(neighbours, "ONE_CALL_MAX_ATOMS", 0)
    for s, a in enumerate(structures):
        f, j, r = neighbour_list(a.positions, a.cell.array, a.pbc, si.rcut, sort=False)
        for x, y in zip(one_call[s], (f, j, r)):
            assert np.array_equal(x, y)
        lo, hi = offsets[s], offsets[s + 1]
        assert np.array_equal(first[lo:hi + 1] - first[lo], f)
        assert np.array_equal(nbr[first[lo]:first[hi]] - lo, j)
        assert np.array_equal(R[first[lo]:first[hi]], r)
        assert np.sqrt(closest[s]) == min_distance(r)


def test_structure_sums_are_numpys():
    """The packed structures' energies are summed as numpy sums e[a:b], at every length (numpy's
    pairwise tree beyond one block of 128 terms included)."""
    from aceserver.kernels.batch_pass import structure_sums
    rng = np.random.default_rng(12)
    sizes = np.concatenate([np.arange(0, 129), rng.integers(0, 129, 200), [129, 256, 257, 1000, 4099]])
    e = rng.normal(size=sizes.sum()) * 10.0 ** rng.integers(-3, 4, sizes.sum())
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    got = structure_sums(e, offsets)
    for k in range(len(sizes)):
        assert got[k] == e[offsets[k]:offsets[k + 1]].sum()


def test_larger_packed_structures(tial):
    """9..64 atoms (the energy sum's blocks of 8), two species."""
    rng = np.random.default_rng(13)
    structures = []
    for n in (9, 16, 17, 33, 64):
        c = random_cell(rng, n, 17.0, skew=0.1)
        structures.append(Atoms(numbers=rng.choice([13, 22], n), positions=rng.random((n, 3)) @ c,
                                cell=c, pbc=True))
    for a, r in zip(structures, tial.evaluate_many(structures)):
        assert_same(r, ev(tial, a))


def test_threads_give_the_same_numbers(si):
    """Parts of the batch searched and passed on several threads (merged lists): the same bits."""
    structures = mixed(si, seed=6, count=200)
    one = si.evaluate_many(structures, threads=1, committee=True)
    two = si.evaluate_many(structures, committee=True, threads=3)
    for a, b in zip(one, two):
        assert a.energy == b.energy and np.array_equal(a.forces, b.forces)
        assert np.array_equal(a.virial, b.virial)
        assert np.array_equal(a.energy_committee, b.energy_committee)


def test_options(si):
    structures = mixed(si, seed=7, count=16)
    no_forces = si.evaluate_many(structures, forces=False)
    full = si.evaluate_many(structures)
    for a, r, f in zip(structures, no_forces, full):
        want = ev(si, a, forces=False)
        assert np.array_equal(r.forces, want.forces) and np.array_equal(r.virial, want.virial)
        assert r.energy == f.energy and r.energy_committee is None
    with_cf = si.evaluate_many(structures[:6], committee=True, committee_forces=True)
    for a, r in zip(structures, with_cf):
        assert_same(r, ev(si, a, committee=True, committee_forces=True))
    tuples = [(a.numbers, a.positions, a.cell.array, a.pbc) for a in structures]
    for r, t in zip(full, si.evaluate_many(tuples)):
        assert r.energy == t.energy and np.array_equal(r.forces, t.forces)
    # lists, scalar pbc and no cell go through the checks of `evaluate` and give its numbers
    odd = [(a.numbers.tolist(), a.positions.tolist(), None, False) for a in structures[:4]]
    for a, r in zip(structures, si.evaluate_many(odd)):
        assert r.energy == si.evaluate(a.numbers, a.positions, threads=1).energy
    assert si.evaluate_many([]) == []


def error_of(call):
    with pytest.raises(ACEInputError) as info:
        call()
    return info.value


def test_errors_by_index(si):
    good = mixed(si, seed=8, count=10)
    bad = {
        2: Atoms("SiC", positions=[[0, 0, 0], [1.5, 0, 0]]),                        # unknown element
        4: Atoms("Si2", positions=[[0, 0, 0], [0, 0, 0]]),                          # on top
        5: Atoms("Si", positions=[[np.nan, 0, 0]]),                                 # NaN
        7: Atoms("Si", cell=[[2, 0, 0], [4, 0, 0], [0, 0, 2]], pbc=True),           # degenerate
        9: (np.array([14]), np.zeros((2, 3)), np.eye(3), np.ones(3, bool)),         # shapes
        11: "not a structure",
        12: Atoms("Si2", positions=[[0, 0, 0], [0, 0, 1e9]]),                       # magnitude
    }
    structures = list(good)
    for k in sorted(bad):
        structures.insert(k, bad[k])
    with pytest.raises(BatchError) as info:
        si.evaluate_many(structures)
    err = info.value
    assert sorted(err.errors) == sorted(bad)
    assert isinstance(err.errors[2], UnknownElementError)
    for k, s in bad.items():
        if k == 11:
            assert "ase.Atoms" in str(err.errors[k])
            continue
        args = (s.numbers, s.positions, s.cell.array, s.pbc) if isinstance(s, Atoms) else s
        want = error_of(lambda: si.evaluate(*args))
        assert str(err.errors[k]) == str(want) and err.errors[k].field == want.field
    assert str(err).startswith("structure 2: ")
    rest = [r for k, r in enumerate(err.results) if k not in bad]
    assert all(r is None for k, r in enumerate(err.results) if k in bad)
    for a, r in zip(good, rest):
        assert r.energy == si.evaluate_many([a])[0].energy


def test_pair_budget_in_order(si):
    structures = mixed(si, seed=9, count=12)[:12]
    pairs = [r.pairs for r in si.evaluate_many(structures)]
    limit = sum(pairs[:5]) + pairs[5] - 1          # structure 5 does not fit, 6.. may
    with pytest.raises(BatchError) as info:
        si.evaluate_many(structures, max_pairs=limit)
    errors = info.value.errors
    assert 5 in errors and isinstance(errors[5], TooManyPairsError)
    assert errors[5].pairs == pairs[5] and errors[5].limit == pairs[5] - 1
    used = sum(pairs[:5])
    for k in range(6, 12):                      # each later one fits in what the earlier left
        if used + pairs[k] <= limit:
            assert k not in errors
            used += pairs[k]
        else:
            assert k in errors


def test_pair_budget_in_order_with_converted_inputs(si):
    """Structures that need conversion (lists) are evaluated one by one, in their place."""
    structures = mixed(si, seed=10, count=8)[:8]
    pairs = [r.pairs for r in si.evaluate_many(structures)]
    mixed_inputs = [(a.numbers.tolist(), a.positions.tolist(), a.cell.array.tolist(), a.pbc.tolist())
                    if k % 2 else a for k, a in enumerate(structures)]
    limit = sum(pairs[:5]) + pairs[5] - 1
    with pytest.raises(BatchError) as info:
        si.evaluate_many(mixed_inputs, max_pairs=limit)
    assert min(info.value.errors) == 5
    assert info.value.errors[5].pairs == pairs[5]


def test_cancel(si):
    stop = threading.Event()
    stop.set()
    with pytest.raises(EvaluationCancelled):
        si.evaluate_many(mixed(si, count=4), cancel=stop)


# ---- HTTP: a `structures` batch is one evaluate_many call; replies equal one-by-one replies ----

def _request(structures, properties=None):
    from aceserver.serving.http.schema import CalculateRequest
    doc = {"structures": [{"numbers": a.numbers.tolist(), "positions": a.positions.tolist(),
                           "cell": a.cell.array.tolist(), "pbc": a.pbc.tolist()} for a in structures]}
    if properties:
        doc["properties"] = properties
    return CalculateRequest.model_validate(doc)


def _one_by_one(model, request, max_pairs):
    """The replies (or the error) of the per-structure path: `evaluate_structure` in order."""
    from aceserver.serving.http import compute
    props = compute.properties_for(request, model.committee is not None)
    budget = compute.PairBudget(max_pairs)
    return [compute.evaluate_structure(model, s, props, f"structures[{i}]", 1, budget)
            for i, s in enumerate(request.structures)]


def _same_reply(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray) or isinstance(b[key], np.ndarray):
            assert np.array_equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_http_batch_equals_one_by_one(si):
    from aceserver.serving.http import compute
    structures = mixed(si, seed=14, count=30)[:-1]   # the empty structure is refused by the schema
    structures = [a for a in structures if len(a)]
    for properties in (None, ["energy", "forces", "stress", "virial", "energies", "committee",
                              "forces_committee"]):
        request = _request(structures, properties)
        assert len(request.structures) > 1
        batch = compute.evaluate_request(si, request, True, threads=1, max_pairs=10**7)
        for got, want in zip(batch, _one_by_one(si, request, 10**7)):
            _same_reply(got, want)


@pytest.mark.parametrize("case", ["element", "overlap", "budget", "element_after_budget"])
def test_http_batch_error_document_is_one_by_ones(si, case):
    """The first failing structure names the reply, with the message of the one-by-one path."""
    from aceserver.serving.http import compute
    from aceserver.serving.http.error_replies import APIError
    structures = [a for a in mixed(si, seed=15, count=12)[:-1] if len(a)]
    pairs = [r.pairs for r in si.evaluate_many(structures)]
    max_pairs = 10**7
    if case in ("element", "element_after_budget"):
        structures[7] = Atoms("SiSiC", positions=[[0, 0, 0], [2.3, 0, 0], [0, 2.3, 0]])
    if case == "overlap":
        structures[4] = Atoms("Si2", positions=[[0, 0, 0], [0, 0, 0]])
    if case in ("budget", "element_after_budget"):
        max_pairs = sum(pairs[:5]) + pairs[5] - 1
    request = _request(structures)
    with pytest.raises(APIError) as want:
        _one_by_one(si, request, max_pairs)
    with pytest.raises(APIError) as got:
        compute.evaluate_request(si, request, True, threads=1, max_pairs=max_pairs)
    assert got.value.body() == want.value.body()
    assert got.value.status == want.value.status


def test_batch_stresses_are_postprocess_stress(si):
    from aceserver.evaluation import postprocess
    structures = mixed(si, seed=16, count=40)
    results = si.evaluate_many(structures)
    got = postprocess.stresses(np.array([r.virial for r in results]),
                               np.array([a.cell.array for a in structures]),
                               np.array([a.pbc for a in structures]))
    for a, r, s in zip(structures, results, got):
        want = r.periodic_stress(a.cell.array, a.pbc)
        assert (s is None) == (want is None)
        if want is not None:
            assert np.array_equal(s, want)


# ---- fitting: error tables and assembly use the batch path, with the same numbers ----

def test_error_tables_and_assembly_equal_one_by_one(si):
    from aceserver.fitting import assembly, data, error_tables
    configs = data.read_configs("tests/data/Si_tiny.xyz", data.Keys(), elements=si.elements)
    predicted = error_tables.predict(si, configs, threads=2)
    for c, (E, F, W) in zip(configs, predicted):
        want = si.evaluate(c.numbers, c.positions, c.cell, c.pbc)
        assert E == want.energy and np.array_equal(F, want.forces) and np.array_equal(W, want.virial)
    system = assembly.assemble(si, configs, threads=1, progress=False)
    weights = data.normalise_weights(None)
    blocks = [assembly.config_block(si, c, data.config_weights(c.config_type, weights), dict(si.E0))
              for c in configs]           # each configuration searched on its own
    assert np.array_equal(system.A, np.vstack([b.A for b in blocks]))
    assert np.array_equal(system.y, np.concatenate([b.y for b in blocks]))


def test_chunks_give_the_same_numbers(si, monkeypatch):
    """Chunks (by atoms, and by the memory of per-structure committee sums) change nothing."""
    structures = mixed(si, seed=17, count=30)
    whole = si.evaluate_many(structures, committee=True)
    monkeypatch.setattr(many, "CHUNK_ATOMS", 7)
    monkeypatch.setattr(many, "COMMITTEE_CHUNK_BYTES", 1)
    for a, b in zip(whole, si.evaluate_many(structures, committee=True)):
        assert_same(a, b)



@pytest.mark.parametrize("chunk_atoms, max_structures",
                         [(7, 10**9), (1, 10**9), (30, 4), (10**6, 10**9)])
def test_atoms_chunks_end_where_the_atoms_reach_chunk_atoms(si, monkeypatch, chunk_atoms,
                                                            max_structures):
    """`_drive_atoms` cuts (searchsorted on the sizes' running sum) are those of a loop over the
    structures: a chunk ends at the structure whose atoms bring it to chunk_atoms, or after
    max_structures structures (empty structures included)."""
    structures = mixed(si, seed=19, count=40)
    structures[3] = Atoms()
    structures[4] = Atoms()
    got = []
    monkeypatch.setattr(many, "_chunk",
                        lambda run, index, *rest: got.append((index.start, index.stop)))
    many._drive_atoms(None, structures, chunk_atoms, max_structures)
    want, lo, atoms = [], 0, 0
    for k, a in enumerate(structures):
        atoms += len(a)
        if atoms >= chunk_atoms or k + 1 - lo >= max_structures or k + 1 == len(structures):
            want.append((lo, k + 1))
            lo, atoms = k + 1, 0
    assert got == want
    assert len(want) > 1 or chunk_atoms == 10**6

def test_concat_is_numpys_concatenate():
    """`many._concat` (the packed arrays as one bytes join) gives np.concatenate's elements bit
    for bit (compared as integers: -0.0, NaN and inf included), as a writeable aligned array (the
    kernels' types), and hands what it cannot join (another dtype, an array that is not
    C-contiguous, sizes that do not add up) to np.concatenate itself."""
    rng = np.random.default_rng(21)
    pos = [rng.normal(size=(n, 3)) * 10.0 for n in (1, 2, 0, 5, 64)]
    pos[0][0] = [-0.0, np.nan, np.inf]
    numbers = [rng.integers(1, 100, size=len(p)) for p in pos]
    pbc = [rng.random(3) < 0.5 for _ in pos]
    for arrays, dtype, bits in ((pos, np.float64, np.uint64), (numbers, np.int64, np.int64),
                                (pbc, np.bool_, np.uint8)):
        want = np.concatenate(arrays).reshape(-1)
        got = many._concat(arrays, np.dtype(dtype), want.size)
        assert got.dtype == want.dtype and got.flags.writeable and got.flags.aligned
        assert np.array_equal(got.view(bits), want.view(bits))
    odd = [pos + [np.asfortranarray(rng.normal(size=(3, 3)))],     # not C-contiguous
           pos + [rng.normal(size=(2, 3)).astype(np.float32)],      # converted by concatenate
           pos + [rng.normal(size=(4, 6))[:, ::2]]]                 # a strided view
    for arrays in odd:
        want = np.concatenate(arrays).reshape(-1)
        got = many._concat(arrays, np.dtype(np.float64), want.size)
        assert got.dtype == want.dtype and np.array_equal(got.view(np.uint64), want.view(np.uint64))
    with pytest.raises(ValueError):      # a size that does not add up: concatenate's own error
        many._concat([np.zeros((2, 3)), np.zeros((2, 2))], np.dtype(np.float64), 12)


def test_parts_are_the_blocks_of_equal_cost(si):
    """`_Run.parts` (one part without threads, taken without `_blocks`' numpy) gives the runs
    that `_blocks` cuts for every thread count, cost length and atom count."""
    rng = np.random.default_rng(23)
    for threads in (1, 2, 3, None):
        run = many._Run(si, 0, True, False, False, threads, None, None)
        n = 1 if threads == 1 else (threads or many.numba.get_num_threads())
        for length in (0, 1, 2, 5, 40):
            cost = rng.integers(1, 9, size=length)
            for n_atoms in (many.THREADS_MIN_ATOMS - 1, many.THREADS_MIN_ATOMS):
                k = 1 if n_atoms < many.THREADS_MIN_ATOMS else n
                b = many._blocks(cost, max(1, min(k, length))).tolist()
                want = [(lo, hi) for lo, hi in zip(b[:-1], b[1:]) if hi > lo]
                assert run.parts(cost, n_atoms) == want


def test_atoms_with_arrays_ase_does_not_make(si, monkeypatch):
    """Atoms whose arrays were replaced behind ASE's setters (a Fortran-ordered or strided
    positions array, float32 positions, a Fortran-ordered cell) go through np.concatenate
    (`_concat`'s fallback) and still give `evaluate`'s numbers bit for bit, on one thread and
    in pieces on two (each piece reads its own structures)."""
    monkeypatch.setattr(many, "THREADS_MIN_ATOMS", 4)
    rng = np.random.default_rng(22)
    odd = [("positions", lambda a: np.asfortranarray(a.positions)),
           ("positions", lambda a: np.repeat(a.positions, 2, axis=1)[:, ::2]),
           ("positions", lambda a: a.positions.astype(np.float32)),
           ("cell", lambda a: np.asfortranarray(a.cell.array + rng.normal(size=(3, 3)) * 0.01))]
    for name, make in odd:           # one odd structure in a batch (a chunk joins all or none)
        structures = mixed(si, seed=22, count=24)[:24]
        a = structures[5]
        assert len(a) > 1
        if name == "cell":
            a.cell.array = make(a)
        else:
            a.arrays[name] = make(a)
        for threads in (1, 2):
            for got, a in zip(si.evaluate_many(structures, threads=threads), structures):
                assert_same(got, ev(si, a))


def test_without_a_budget_each_structure_has_its_own_limit(si, monkeypatch):
    """max_pairs=None: no budget over the batch; a structure over evaluate's own limit fails alone."""
    structures = mixed(si, seed=18, count=10)[:10]
    pairs = [r.pairs for r in si.evaluate_many(structures)]
    monkeypatch.setattr(many, "DEFAULT_MAX_PAIRS", max(pairs) - 1)
    k = pairs.index(max(pairs))
    with pytest.raises(BatchError) as info:
        si.evaluate_many(structures)
    assert list(info.value.errors) == [k] and isinstance(info.value.errors[k], TooManyPairsError)
    monkeypatch.setattr(many, "DEFAULT_MAX_PAIRS", max(pairs))
    assert [r.pairs for r in si.evaluate_many(structures)] == pairs     # sum(pairs) > the limit


def packed_arrays(structures):
    return ([len(a) for a in structures], np.concatenate([a.numbers for a in structures]),
            np.concatenate([a.positions for a in structures]).reshape(-1, 3),
            np.stack([a.cell.array for a in structures]), np.stack([a.pbc for a in structures]))


@pytest.mark.parametrize("name", ["si", "tial"])
def test_evaluate_packed_is_evaluate_many(name, request, monkeypatch):
    """Structures given as arrays (the HTTP packed batch): evaluate_many's results bit for bit
    (and so evaluate's), with the committee, in chunks (a small CHUNK_ATOMS), on threads; the
    caller's arrays are left as they were."""
    model = request.getfixturevalue(name)
    structures = mixed(model, seed=12, count=60)
    arrays = packed_arrays(structures)
    copies = [np.array(a, copy=True) for a in arrays]
    want = model.evaluate_many(structures, threads=1, committee=True, committee_forces=name == "si")
    for chunk, threads in ((many.CHUNK_ATOMS, 1), (17, 1), (many.CHUNK_ATOMS, 2)):
        monkeypatch.setattr(many, "CHUNK_ATOMS", chunk)
        got = model.evaluate_packed(*arrays, threads=threads, committee=True, committee_forces=name == "si")
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
    for a, c in zip(arrays, copies):
        assert np.array_equal(a, c)


def test_evaluate_packed_errors_and_budget_are_evaluate_manys(si):
    """Bad structures among good ones: the same errors by index (evaluate's messages and fields)
    and the same results for the others; the pair budget spent in the same order."""
    structures = mixed(si, seed=8, count=10)
    structures.insert(2, Atoms("SiC", positions=[[0, 0, 0], [1.5, 0, 0]]))
    structures.insert(4, Atoms("Si2", positions=[[0, 0, 0], [0, 0, 0]]))
    structures.insert(5, Atoms("Si", positions=[[np.nan, 0, 0]]))
    structures.insert(7, Atoms("Si", cell=[[2, 0, 0], [4, 0, 0], [0, 0, 2]], pbc=True))
    structures.insert(8, Atoms("Si2", positions=[[0, 0, 0], [0, 0, 1e9]]))
    infos = []
    for call in (lambda: si.evaluate_many(structures), lambda: si.evaluate_packed(*packed_arrays(structures))):
        with pytest.raises(BatchError) as info:
            call()
        infos.append(info.value)
    want, got = infos
    assert sorted(got.errors) == sorted(want.errors) == [2, 4, 5, 7, 8]
    for k in want.errors:
        assert type(got.errors[k]) is type(want.errors[k])
        assert str(got.errors[k]) == str(want.errors[k]) and got.errors[k].field == want.errors[k].field
    for g, w in zip(got.results, want.results):
        assert (g is None) == (w is None)
        if w is not None:
            assert_same(g, w)
    good = [a for k, a in enumerate(structures) if k not in want.errors]
    pairs = [r.pairs for r in si.evaluate_many(good)]
    limit = sum(pairs[:4]) + pairs[4] - 1
    for kind in ("many", "packed"):
        with pytest.raises(BatchError) as info:
            if kind == "many":
                si.evaluate_many(good, max_pairs=limit)
            else:
                si.evaluate_packed(*packed_arrays(good), max_pairs=limit)
        infos.append(info.value)
    assert sorted(infos[2].errors) == sorted(infos[3].errors) and 4 in infos[3].errors
    counts, *rest = packed_arrays(good[:2])
    with pytest.raises(ACEInputError, match="add up"):
        si.evaluate_packed([counts[0], counts[1] + 1], *rest)


def test_pieces_on_threads_give_the_same_results_and_errors(si, monkeypatch):
    """Threaded chunks run as pieces (`_Run.pieces`: each packed, searched, passed and collected
    on a thread of its own), here forced on small batches: the results of threads=1 bit for bit,
    the same errors by index (bad structures of every kind among good ones, some evaluated one
    by one after the pieces), for Atoms, tuples that need converting and packed arrays."""
    monkeypatch.setattr(many, "THREADS_MIN_ATOMS", 4)
    pieces = []
    real = many._Run.run_pieces
    monkeypatch.setattr(many._Run, "run_pieces",
                        lambda self, piece, cuts: (pieces.append(len(cuts) - 1), real(self, piece, cuts)))
    structures = mixed(si, seed=14, count=40)
    for k, bad in ((3, Atoms("SiC", positions=[[0, 0, 0], [1.5, 0, 0]])),
                   (9, Atoms("Si2", positions=[[0, 0, 0], [0, 0, 0]])),
                   (20, Atoms("Si", positions=[[np.nan, 0, 0]])),
                   (31, Atoms("Si", cell=[[2, 0, 0], [4, 0, 0], [0, 0, 2]], pbc=True)),
                   (33, (np.array([14]), [[0.0, 0.0, 0.0]], None, False))):
        structures.insert(k, bad)
    good = [s for s in structures if isinstance(s, Atoms)]
    failed = {}
    for kind, call in {"atoms": lambda f: f(good), "mixed": lambda f: f(structures)}.items():
        infos = []
        for threads in (1, 2, 3):
            with pytest.raises(BatchError) as info:
                call(lambda s: si.evaluate_many(s, threads=threads, committee=True))
            infos.append(info.value)
        want = failed[kind] = infos[0]
        for got in infos[1:]:
            assert list(got.errors) == list(want.errors) and len(got.errors) >= 4
            for k in want.errors:
                assert str(got.errors[k]) == str(want.errors[k])
            for g, w in zip(got.results, want.results):
                assert (g is None) == (w is None)
                if w is not None:
                    assert_same(g, w)
    ok = [a for k, a in enumerate(good) if k not in failed["atoms"].errors][:30]
    want = si.evaluate_many(ok, threads=1, committee=True, committee_forces=True)
    for got in (si.evaluate_many(ok, threads=2, committee=True, committee_forces=True),
                si.evaluate_packed(*packed_arrays(ok), threads=2, committee=True, committee_forces=True)):
        for g, w in zip(got, want):
            assert_same(g, w)
    assert len(pieces) >= 6 and min(pieces) >= 2     # the pieces path did run


def test_well_shaped_is_the_numpy_test():
    """`batch_neighbours.well_shaped` (scalar arithmetic) against the numpy test it replaced
    (norms, sqrt(det Gram) / Π lengths) for 1, 2 and 3 periodic vectors: random, skewed, nearly
    dependent, zero, very short and NaN vectors. The two may differ only where the sine or a
    length lies within rounding (1e-9 relative) of its threshold; none of these does."""
    from aceserver.kernels import batch_neighbours as BN
    rng = np.random.default_rng(15)
    for p in (1, 2, 3):
        v = rng.normal(size=(3000, p, 3))
        v[::5, -1] = v[::5, 0] * 2.0 + rng.choice([1e-3, 1e-5, 1e-7], size=(600, 1)) * rng.normal(size=(600, 3))
        v[1::9, 0] = 0.0
        v[2::11, 0] *= rng.choice([1e-6, 1e-7, 1e-8], size=(len(v[2::11]), 1))
        v[4::17, 0, 1] = np.nan
        lengths = np.linalg.norm(v, axis=2)
        want = (lengths >= BN._MIN_LENGTH).all(axis=1)
        if p >= 2:
            with np.errstate(all="ignore"):
                sine = np.sqrt(np.maximum(np.linalg.det(v @ v.transpose(0, 2, 1)), 0.0)) / lengths.prod(axis=1)
            want &= sine >= BN._MIN_SINE
        got = BN.well_shaped(np.ascontiguousarray(v))
        assert np.array_equal(got, want) and 0 < want.sum() < len(want)
    assert BN.well_shaped(np.zeros((0, 3, 3))).shape == (0,)


def test_private_tables_are_copies(si):
    """Each piece's kernel tables (`many._private_tables`): the model's own for the first, then
    copies kept between calls, equal array for array, with the same dtype, layout and flags."""
    T = si._tables(True)
    sets = many._private_tables(T, 3)
    assert sets[0] is T and len(sets) == 3 and many._private_tables(T, 2)[1] is sets[1]
    for copy_ in sets[1:]:
        assert type(copy_) is type(T)
        for a, b in zip(T, copy_):
            if isinstance(a, np.ndarray):
                assert (b is not a) == a.flags.c_contiguous     # others are shared
                assert b.dtype == a.dtype and np.array_equal(a, b)
                assert b.flags.c_contiguous == a.flags.c_contiguous
                assert b.flags.writeable == a.flags.writeable
            else:
                assert b == a
