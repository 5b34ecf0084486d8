"""Building, storing, loading and shipping active sets (`fitting.active_set_build`,
`io.activeset_file`, `loading`, `aceserver activeset`), against independent references: the
descriptors of the atoms each active row names (`model.descriptors` of that frame), γ from
numpy.linalg.solve, a plain reference MaxVol on all rows in memory (`test_active_set`), the
`.asi` bytes, and γ of structures far from the data.

Data: tests/data/Si_tiny.xyz (53 Si configurations, 229 atoms: 25 `dia` and 25 `bt` 2-atom cells,
two 64-atom liquids, an isolated atom). A small model (order 2, totaldegree 6: L = 23; the data
span all 23 directions, the weakest at 2e-9 of the column scales, below the default floor, so one
floor row) and the shipped Si-tiny model (L = 223; its data span 178 directions: the two atoms of
each 2-atom cell are images of each other under inversion, so they share one descriptor row).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk

import aceserver
from aceserver import cli
from aceserver.errors import ModelFileError, NoActiveSetError
from aceserver.fitting.active_set import ActiveSetError
from aceserver.fitting.active_set_build import build_active_set, read_structures
from aceserver.fitting.workflow import fit_active_set
from aceserver.io import activeset_file, asi
from aceserver.loading import load_model
from test_active_set import reference_maxvol

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent
EPS = np.finfo(float).eps
TOL = 1e-8            # the bound on γ of training atoms (MaxVol runs with tol = 1e-9)


@pytest.fixture(scope="module")
def frames():
    return ase.io.read(DATA / "Si_tiny.xyz", ":")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small Si model saved to a file (L = 23 descriptor columns)."""
    m = aceserver.ace1_model(elements=["Si"], order=2, totaldegree=6, rcut=5.0, E0={"Si": -158.5})
    m.parameters = np.random.default_rng(2).normal(size=m.length_basis)
    path = tmp_path_factory.mktemp("small") / "small.json"
    m.save(path)
    return path


@pytest.fixture(scope="module")
def small_build(small, frames):
    return build_active_set(load_model(small, active_set=False), frames)


def gammas(model, frames):
    return np.concatenate([model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc,
                                          gamma=True).gamma for a in frames])


def descriptors(model, frames):
    return np.vstack([model.descriptors(a.numbers, a.positions, a.cell.array, a.pbc) for a in frames])


def test_active_rows_are_the_named_atoms_and_training_atoms_interpolate(small, small_build, frames):
    model = load_model(small, active_set=False)
    e = small_build.elements["Si"]
    L = model.descriptor_sizes["Si"]
    assert e.atoms_read == 229 and e.active_set.rows.shape == (L, L) == (23, 23)
    # each active row is the descriptor row of the (frame, atom) it names, or a floor row
    # floor · (column scale, a power of two) · e_k, with floor · scale ≤ floor · max|column|·√2
    D = descriptors(model, frames)
    for r, (f, i, k) in enumerate(zip(e.frames, e.atoms, e.columns)):
        if k >= 0:
            assert f == i == -1
            want = np.zeros(L)
            want[k] = e.active_set.rows[r, k]
            np.testing.assert_array_equal(e.active_set.rows[r], want)
            assert 0 < want[k] <= 1e-6 * np.abs(D[:, k]).max() * 2 ** 0.5
            continue
        a = frames[f]
        np.testing.assert_array_equal(
            e.active_set.rows[r], model.descriptors(a.numbers, a.positions, a.cell.array, a.pbc,
                                                    atoms=[i])[0, :L])
    model.attach_active_set(small_build.inverses(), model_sha256=model.sha256)
    g = gammas(model, frames)
    assert g.max() <= 1 + TOL
    # γ by numpy: c A = b for every training row b (solve, no inverse)
    ref = np.abs(np.linalg.solve(e.active_set.rows.T, D.T)).max(axis=0)
    kappa = np.linalg.cond(e.active_set.rows)
    np.testing.assert_allclose(g, ref, rtol=0, atol=10 * L * kappa * EPS * max(1, ref.max()))
    assert abs(max(e.active_set.max_gamma, ref.max()) - ref.max()) <= 1e-9 + 10 * L * kappa * EPS


def test_det_not_below_reference_maxvol(small, small_build, frames):
    """|det A| of the builder (streamed) is not below the plain reference MaxVol on the same
    candidate rows held in memory, within 1e-6 relative (the issue's bound). The rows are those
    the builder's MaxVol sees: the descriptor columns divided by their scales (powers of two near
    their largest values), and the floor rows 1e-6 · e_k. Column scaling changes no set's rank by
    |det| (det(A S) = det(A) det(S)) but does change a greedy start, and so which local maximum
    the swaps end in: from unscaled rows both end elsewhere, sometimes higher, sometimes lower
    (±0.4 in log |det| on these data). The reference stops at swaps of 1 + 1e-6: its G comes from
    a solve with A (κ ≈ 5e7), whose rounding (κ·ε ≈ 1e-8) lets it cycle at 1e-9 (so does MaxVol
    without floor rows on these data)."""
    D = descriptors(load_model(small, active_set=False), frames)
    scale = np.exp2(np.round(np.log2(np.abs(D).max(axis=0))))
    X = np.vstack([D / scale, 1e-6 * np.eye(len(scale))])
    ref = np.linalg.slogdet(X[reference_maxvol(X, tol=1e-6)])[1] + np.log(scale).sum()
    assert small_build.elements["Si"].active_set.log_abs_det >= ref + math.log1p(-1e-6)


def _same_rows(A, B):
    """A and B hold the same rows in some order (rows match exactly: ties between equal rows,
    such as the two atoms of a 2-atom diamond cell, may be broken by other atoms)."""
    return sorted(map(tuple, A)) == sorted(map(tuple, B))


def test_batch_size_does_not_change_the_result(small, small_build, frames):
    model = load_model(small, active_set=False)
    want = small_build.elements["Si"]
    D = descriptors(model, frames)
    for batch in (7, 64, 100_000):
        got = build_active_set(model, frames, batch_atoms=batch).elements["Si"]
        assert _same_rows(got.active_set.rows, want.active_set.rows), batch
        # the same rows: |det| and γ agree to the rounding of the two inverses (κ(A)·ε)
        kappa = np.linalg.cond(want.active_set.rows)
        assert abs(got.active_set.log_abs_det - want.active_set.log_abs_det) <= 23 * kappa * EPS
        np.testing.assert_allclose(np.abs(D @ got.active_set.inverse).max(axis=1),
                                   np.abs(D @ want.active_set.inverse).max(axis=1),
                                   rtol=0, atol=10 * 23 * kappa * EPS)


def test_streamed_files_give_the_same_set(small, small_build):
    got = build_active_set(load_model(small, active_set=False), read_structures([DATA / "Si_tiny.xyz"]))
    assert _same_rows(got.elements["Si"].active_set.rows, small_build.elements["Si"].active_set.rows)
    with pytest.raises(TypeError, match="several times"):
        build_active_set(load_model(small, active_set=False), iter([]))


def test_sidecar_round_trip(small, small_build, frames, tmp_path):
    path = tmp_path / small.name
    shutil.copy(small, path)
    small_build.save(activeset_file.sidecar_path(path))
    assert activeset_file.sidecar_path(path).name == "small.activeset.npz"
    direct = load_model(path, active_set=False)
    direct.attach_active_set(small_build.inverses(), model_sha256=direct.sha256)
    loaded = load_model(path)
    assert loaded.active_set is not None and loaded.active_set.model_sha256 == loaded.sha256
    # A is recomputed from the same neighbour vectors (rows equal up to the order of sums) and
    # inverted by LU instead of MaxVol's updates: γ agrees to the rounding of A⁻¹, κ(A)·ε
    A = small_build.elements["Si"].active_set.rows
    g, g_direct = gammas(loaded, frames), gammas(direct, frames)
    L = A.shape[0]
    np.testing.assert_allclose(g, g_direct, rtol=0, atol=10 * L * np.linalg.cond(A) * EPS)
    assert g.max() <= 1 + TOL


def test_stale_sidecar_is_refused_with_its_reason(small, small_build, frames, tmp_path):
    path = tmp_path / small.name
    other = load_model(small, active_set=False)
    other.parameters = other.parameters * 1.5          # another model: another sha256
    other.save(path)
    small_build.save(activeset_file.sidecar_path(path))
    model = load_model(path)
    assert model.active_set is None
    assert "small.activeset.npz was built for the model with sha256" in model.active_set_problem
    a = frames[-1]
    with pytest.raises(NoActiveSetError, match="was built for the model with sha256"):
        model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, gamma=True)
    with pytest.raises(ModelFileError, match="was built for the model"):
        load_model(path, active_set=activeset_file.sidecar_path(path))
    assert model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc).energy == \
        pytest.approx(other.evaluate(a.numbers, a.positions, a.cell.array, a.pbc).energy, rel=0)


def test_asi_round_trip(small, small_build, frames, tmp_path):
    small_build.save_asi(tmp_path / "small.asi")
    back = asi.read(tmp_path / "small.asi")
    assert back["Si"].tobytes() == small_build.inverses()["Si"].tobytes()
    direct = load_model(small, active_set=False)
    direct.attach_active_set(small_build.inverses())
    via_asi = load_model(small, active_set=tmp_path / "small.asi")
    assert via_asi.active_set.model_sha256 is None            # an .asi does not name its model
    np.testing.assert_array_equal(gammas(via_asi, frames), gammas(direct, frames))
    pyace = pytest.importorskip("pyace.activelearning", reason="pyace (the [pyace] extra) not installed")
    assert pyace.load_active_inverse_set(str(tmp_path / "small.asi"))[0].tobytes() == back["Si"].tobytes()


def test_rank_deficient_data(frames, small):
    """The shipped Si-tiny basis (L = 223) on Si_tiny: the data span 178 directions. Without
    floor rows that is an ActiveSetError naming the element, the rank and L; with them (the
    default) 45 floor rows complete A and every training atom still interpolates."""
    model = load_model(REPO / "models" / "Si-tiny" / "Si-tiny.json", active_set=False)
    with pytest.raises(ActiveSetError, match=r"^Si: the 229 rows span only 178 of the 223"):
        build_active_set(model, frames, floor=0)
    b = build_active_set(model, frames)
    e = b.elements["Si"]
    assert e.floor_rows == 223 - 178 and (e.frames >= 0).sum() == 178
    floor = e.active_set.rows[e.columns >= 0]
    assert (np.count_nonzero(floor, axis=1) == 1).all()           # floor · scale_k · e_k
    model.attach_active_set(b.inverses(), model_sha256=model.sha256)
    assert gammas(model, frames).max() <= 1 + TOL
    one = [a for a in frames if len(a) == 2][:1]
    with pytest.raises(ActiveSetError, match="^Si: the 2 rows span only 1 of the 223"):
        build_active_set(model, one, floor=0)
    with pytest.raises(ActiveSetError, match="^Si: the data hold no atoms"):
        build_active_set(model, [bulk("Ge", "diamond", a=5.6)], floor=0)


def test_shipped_si_tiny_extrapolates_outside_its_data(frames):
    model = load_model(REPO / "models" / "Si-tiny" / "Si-tiny.json")
    assert model.active_set is not None, model.active_set_problem
    # γ of the training atoms: ≤ 1 + 1e-9 in MaxVol, plus the rounding of b A⁻¹ through the LU
    # inverse, ≤ L·κ(A_s)·ε with A_s the column-scaled A (κ ≈ 2.6e8 here, from 45 floor rows)
    A = np.linalg.inv(model.active_set.inverses["Si"])
    kappa = np.linalg.cond(A / np.abs(A).max(axis=0))
    assert gammas(model, frames).max() <= 1 + 1e-9 + 223 * kappa * EPS
    squeezed = bulk("Si", "diamond", a=5.43 * 0.8, cubic=True)
    hot = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    # displacements of 0.3 Å rms per component: ~10⁴ K for the harmonic crystal, far above the
    # data's liquid (the atoms are still ≥ 1.3 Å apart)
    hot.positions += np.random.default_rng(0).normal(scale=0.3, size=hot.positions.shape)
    for a in (squeezed, hot):
        g = model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, gamma=True)
        assert g.max_gamma > 5


def test_shipped_zuo_si_interpolates_diamond_and_flags_squeezed_and_hot():
    """zuo-Si's active set (1624 of its 13233 training atoms and 10 floor rows): the perfect
    diamond crystal lies inside its data (γ = 0.46), the compressed and the hot cell far outside
    (γ ≈ 4e3 and 3e4)."""
    model = load_model(REPO / "models" / "zuo-Si" / "zuo-Si.json")
    assert model.active_set is not None, model.active_set_problem
    squeezed = bulk("Si", "diamond", a=5.43 * 0.8, cubic=True)
    hot = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    hot.positions += np.random.default_rng(0).normal(scale=0.3, size=hot.positions.shape)
    g = {k: model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, gamma=True).max_gamma
         for k, a in {"diamond": bulk("Si", "diamond", a=5.43, cubic=True), "squeezed": squeezed,
                      "hot": hot}.items()}
    assert g["diamond"] < 1 and g["squeezed"] > 5 and g["hot"] > 5, g


def test_command_end_to_end(small, frames, tmp_path, capsys):
    path = tmp_path / small.name
    shutil.copy(small, path)
    rc = cli.main(["activeset", str(path), str(DATA / "Si_tiny.xyz"), "--asi",
                   str(tmp_path / "out.asi"), "--batch-atoms", "50", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["Si"])
    assert row[1] == "23" and row[3] == "229"                # element, L, floor rows, atoms
    assert float(row[-1]) <= 1 + 1e-9                        # max γ over the data
    model = load_model(path)
    assert model.active_set is not None
    assert gammas(model, frames).max() <= 1 + TOL
    env = activeset_file.read(activeset_file.sidecar_path(path))
    assert env.data_files == ["Si_tiny.xyz"] and env.model_sha256 == model.sha256
    assert asi.read(tmp_path / "out.asi")["Si"].shape == (23, 23)
    assert cli.main(["activeset", str(path), str(tmp_path / "missing.xyz")]) == 2
    assert "missing.xyz does not exist" in capsys.readouterr().err


def test_fit_writes_the_sidecar_and_warns_when_it_cannot(small, frames, tmp_path, capsys):
    model = load_model(small, active_set=False)
    path = tmp_path / "fitted.json"
    model.save(path)
    report = fit_active_set(model, frames, path, [DATA / "Si_tiny.xyz"])
    assert report["file"] == "fitted.activeset.npz" and report["elements"][0]["atoms"] == 229
    assert load_model(path).active_set is not None
    two = aceserver.ace1_model(elements=["Si", "Ge"], order=2, totaldegree=4, rcut=5.0)
    report = fit_active_set(two, frames, tmp_path / "two.json")
    assert "Ge: the data hold no atoms" in report["error"]
    assert "warning: no active set written" in capsys.readouterr().out
    assert not (tmp_path / "two.activeset.npz").exists()


@pytest.mark.parametrize("change, match", [
    (lambda a: a.pop("model_sha256"), "'model_sha256' is missing"),
    (lambda a: a.update(format=np.array("other")), "'format'"),
    (lambda a: a.update(version=np.array(2)), "version 1"),
    (lambda a: a.update(offsets=a["offsets"][:-1]), "'offsets'"),
    (lambda a: a.update(vectors=a["vectors"][:-1]), "'vectors'"),
    (lambda a: a.update(numbers=a["numbers"] * 0), "atomic number"),
    (lambda a: a.update(atom_counts=a["atom_counts"] + 1), "'atom_counts'"),
    (lambda a: a.update(vectors=a["vectors"] * np.nan), "finite"),
    (lambda a: a.update(centre_numbers=np.array([None] * len(a["centre_numbers"]), dtype=object)),
     "pickle"),
])
def test_malformed_sidecar_refused(small_build, tmp_path, change, match):
    arrays = activeset_file._arrays(small_build.environments)
    change(arrays)
    path = tmp_path / "bad.activeset.npz"
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(ModelFileError, match=match):
        activeset_file.read(path)


def test_recomputed_active_set_must_match_its_determinant(small, small_build, tmp_path):
    """Environments whose rows do not give the stored log|det A| (edited vectors) are refused."""
    env = small_build.environments
    env2 = activeset_file.ActiveSetEnvironments(**{**env.__dict__, "vectors": env.vectors * 1.01})
    path = tmp_path / "edited.activeset.npz"
    activeset_file.write(path, env2)
    with pytest.raises(ModelFileError, match=r"log\|det A\|"):
        load_model(small, active_set=path)
    json.dumps(activeset_file.read(path).data_files)           # plain strings, no numpy types
    # beside the model, the check waits for the first γ request, which gets the reason
    shutil.copy(small, tmp_path / "edited.json")
    model = load_model(tmp_path / "edited.json")
    assert model.active_set is not None and model.active_set_problem is None
    a = bulk("Si", "diamond", a=5.43)
    with pytest.raises(NoActiveSetError, match=r"log\|det A\|"):
        model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, gamma=True)
    assert model.active_set is None and "log|det A|" in model.active_set_problem
    with pytest.raises(NoActiveSetError, match=r"log\|det A\|"):
        model.evaluate(a.numbers, a.positions, a.cell.array, a.pbc, gamma=True)


@pytest.mark.parametrize("active_set", [True, False])
def test_aceserver_fit_writes_the_sidecar_unless_told_not_to(tmp_path, capsys, active_set):
    import yaml
    cfg = {"model": {"elements": ["Si"], "order": 2, "totaldegree": 6, "rcut": 5.0},
           "E0": {"Si": -158.54496821},
           "data": {"train": str(DATA / "Si_tiny.xyz"), "energy_key": "dft_energy",
                    "force_key": "dft_force", "virial_key": "dft_virial"},
           "solver": {"name": "qr"}, "output": {"model": "m.json", "plots": None,
                                                "active_set": active_set}}
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["fit", str(tmp_path / "fit.yaml"), "--quiet", "--json-report",
                     str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    model = load_model(tmp_path / "m.json")
    if active_set:
        assert report["active_set"]["file"] == "m.activeset.npz"
        assert model.active_set is not None and "active set written to" in capsys.readouterr().out
    else:
        assert report["active_set"] is None and model.active_set is None
        assert not (tmp_path / "m.activeset.npz").exists()
    cfg["output"]["active_set"] = "yes"
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(cfg))
    assert cli.main(["fit", str(tmp_path / "fit.yaml"), "--quiet"]) == 2
    assert "'output.active_set' must be true or false" in capsys.readouterr().err


def test_yace_potential_gets_a_sidecar_tied_to_its_file(tmp_path):
    """A pacemaker .yace potential: descriptors are its projections (L = 1484 for
    Cu-PBE-core-rep); 256 atoms of rattled fcc cells give 256 data rows and 1228 floor rows. The
    sidecar beside the .yace is tied to the file's sha256: an edited .yace does not take it."""
    path = tmp_path / "Cu.yace"
    shutil.copy(DATA / "Cu-PBE-core-rep.yace", path)
    model = load_model(path)
    rng = np.random.default_rng(0)
    cells = []
    for _ in range(8):
        a = bulk("Cu", "fcc", a=3.61 * (1 + rng.uniform(-0.05, 0.05)), cubic=True).repeat((2, 2, 2))
        a.positions += rng.normal(scale=0.1, size=a.positions.shape)
        cells.append(a)
    b = build_active_set(model, cells)
    e = b.elements["Cu"]
    assert e.atoms_read == 256 and (e.columns < 0).sum() == 256 and e.floor_rows == 1484 - 256
    b.save(activeset_file.sidecar_path(path))
    loaded = load_model(path)
    assert loaded.active_set is not None and loaded.active_set.model_sha256 == model.sha256
    A = b.elements["Cu"].active_set.rows
    kappa = np.linalg.cond(A / np.abs(A).max(axis=0))
    assert gammas(loaded, cells).max() <= 1 + 1e-9 + 1484 * kappa * EPS
    squeezed = bulk("Cu", "fcc", a=3.61 * 0.8, cubic=True)
    assert loaded.evaluate(squeezed.numbers, squeezed.positions, squeezed.cell.array, True,
                           gamma=True).max_gamma > 5
    path.write_text(path.read_text().replace("elements:", "elements:  ", 1))   # another file
    assert "was built for the model with sha256" in load_model(path).active_set_problem


def test_batched_neighbour_search_gives_the_per_frame_build_bit_for_bit(small, frames, monkeypatch):
    """The descriptor rows are computed on neighbour lists searched many frames at a time
    (`evaluation.many.neighbour_lists`, issue 25); the reference is the per-frame search, which
    the builder falls back to when a chunk holds a bad frame (forced here): every array of the
    result the same bits, and a chunk boundary inside the data (SEARCH_ATOMS small) changes nothing."""
    from aceserver.errors import BatchError
    from aceserver.fitting import active_set_build as build

    model = load_model(small, active_set=False)
    batched = build.build_active_set(model, frames)
    monkeypatch.setattr(build, "SEARCH_ATOMS", 37)
    chunked = build.build_active_set(model, frames)

    def refuse(*args, **kwargs):
        raise BatchError({0: aceserver.errors.ACEInputError("forced")}, [None])
    monkeypatch.setattr(build, "neighbour_lists", refuse)
    per_frame = build.build_active_set(model, frames)
    for got in (batched, chunked):
        a, b = got.elements["Si"], per_frame.elements["Si"]
        assert np.array_equal(a.active_set.rows, b.active_set.rows)
        assert np.array_equal(a.active_set.inverse, b.active_set.inverse)
        assert a.active_set.log_abs_det == b.active_set.log_abs_det
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.atoms, b.atoms)
        assert np.array_equal(got.environments.vectors, per_frame.environments.vectors)
    bad = [a.copy() for a in frames[:5]]
    bad[3].positions[1] = bad[3].positions[0]             # atoms on top of each other in frame 3
    monkeypatch.undo()
    with pytest.raises(aceserver.errors.ACEInputError, match="on top of each other"):
        build.build_active_set(model, bad)
