"""`aceserver learn` (`aceserver.learning`): a tiny run end to end, resuming after an interruption,
the D-optimal selection, the labellers and their failures, the configuration's checks.

References are independent of the loop: the teacher evaluated directly (`ACECalculator` on the
teacher file) for the labels; γ from numpy (max |b A⁻¹| with A⁻¹ = numpy.linalg.inv of the rows
that `active_sets.active_set_rows` recomputes from the sidecar) for the picks; ASE's EMT for the
command labeller; errors recomputed with numpy from the final model's predictions.

Teacher: tests/data/Cu-PBE-core-rep.yace. The learned model is small (order 2, totaldegree 6, rcut
4.5: L = 23 descriptor columns) so that a run is a few seconds after numba's first compile.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from aceserver.active_sets import active_set_rows
from aceserver.calculator import ACECalculator
from aceserver.fitting.active_set_build import build_active_set
from aceserver.io import activeset_file
from aceserver.io.activeset_file import sidecar_path
from aceserver.learning import LearnConfigError, Learner, LearnError
from aceserver.learning.config import parse_config
from aceserver.learning.labellers import CommandLabeller, LabelError
from aceserver.learning.select import frame_rows, select
from aceserver.learning.store import Dataset, complete_prefix
from aceserver.loading import load_model

DATA = Path(__file__).parent / "data"
TEACHER = DATA / "Cu-PBE-core-rep.yace"
PY = sys.executable


def write_seed(tmp: Path) -> None:
    ase.io.write(tmp / "seed.xyz", bulk("Cu", "fcc", a=3.615, cubic=True) * (2, 1, 1), format="extxyz")


def tiny_raw(**overrides) -> dict:
    raw = {
        "model": {"elements": ["Cu"], "order": 2, "totaldegree": 6, "rcut": 4.5},
        "E0": {"Cu": 0.0}, "solver": {"name": "blr"}, "seed": 3, "threads": 1,
        "seeds": "seed.xyz",
        "initial": {"copies": 2, "rattle_A": 0.05, "strain": 0.02, "seed": 1},
        "exploration": {"kind": "md", "ensemble": "nvt", "steps": 40, "timestep_fs": 2.0,
                        "temperatures_K": [900], "strains": [-0.03, 0.03], "write_every": 4},
        "selection": {"gamma_threshold": 1.2, "gamma_halt": 50, "per_iteration": 3},
        "budget": 20, "max_iterations": 2,
        "labeller": {"model": str(TEACHER)},
        "output": "out",
    }
    raw.update(overrides)
    return raw


def teacher_labels(atoms):
    a = atoms.copy()
    a.calc = ACECalculator(str(TEACHER), committee=False)
    return a.get_potential_energy(), a.get_forces(), a.get_stress(voigt=True)


class Interrupt:
    """A labeller wrapper that raises KeyboardInterrupt at its `at`-th call (an interruption)."""

    def __init__(self, inner, at: int):
        self.inner, self.at, self.calls = inner, at, 0

    def label(self, atoms):
        self.calls += 1
        if self.calls == self.at:
            raise KeyboardInterrupt
        return self.inner.label(atoms)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny run twice: straight through (a) and interrupted in iteration 1's labelling, a
    half-written frame left at the end of the data set, then resumed (b)."""
    out = {}
    for name in ("a", "b"):
        tmp = tmp_path_factory.mktemp(name)
        write_seed(tmp)
        cfg = parse_config(tiny_raw(), tmp)
        if name == "b":
            first = Learner(cfg, progress=False, threads=1)
            first.labeller = Interrupt(first.labeller, at=5)      # 3 initial frames, then 1 of iteration 1
            with pytest.raises(KeyboardInterrupt):
                first.run()
            out["b_interrupted"] = len(Dataset(cfg.output / "dataset.xyz"))
            with open(cfg.output / "dataset.xyz", "ab") as fh:   # a crash in the middle of a write
                fh.write(b"8\nLattice=\"7.23 0 0 0 3.615 0 0 0 3.615\" Properties=species:S:1:pos:R:3\nCu 0 0")
        result = Learner(cfg, progress=False, threads=1).run()
        out[name] = (cfg, result)
    return out


def test_run_end_to_end(runs):
    cfg, result = runs["a"]
    d = cfg.output
    frames = ase.io.read(d / "dataset.xyz", index=":")
    # iteration 0: the seed and 2 copies; iteration 1: at most per_iteration picks
    its = [int(a.info["iteration"]) for a in frames]
    assert its[:3] == [0, 0, 0] and set(its[3:]) == {1} and 1 <= len(its) - 3 <= 3
    assert [int(a.info["pick"]) for a in frames if a.info["iteration"] == 1] == list(range(len(its) - 3))
    assert result["labels"] == len(frames) and result["iterations"] == 2
    assert result["stopped"].startswith("max_iterations")
    for k in (0, 1):             # the model files name the data set by name only, no machine path
        assert str(d) not in (d / f"iter_{k:03d}" / "model.json").read_text()
    # the labels are the teacher's (energy eV, forces eV/Å, stress eV/Å³) at the positions the file
    # holds (the structures were labelled as read back from selected.xyz, so the positions are the
    # same doubles); extended XYZ prints energy and stress in full, forces with 8 decimals
    for a in frames:
        E, F, S = teacher_labels(a)
        assert abs(a.get_potential_energy() - E) <= 1e-12 * abs(E)
        np.testing.assert_allclose(a.get_forces(), F, rtol=0, atol=1e-8)
        np.testing.assert_allclose(a.get_stress(voigt=True), S, rtol=0, atol=1e-14)
    # the picks of iteration 1 extrapolate for model 0: γ recomputed with numpy from the sidecar's rows
    m0 = load_model(d / "iter_000" / "model.json", active_set=False)
    A = active_set_rows(m0, activeset_file.read(sidecar_path(d / "iter_000" / "model.json")))["Cu"]
    A_inv = np.linalg.inv(A)
    grade = lambda a: np.abs(m0.descriptors(a.numbers, a.positions, a.cell.array, a.pbc) @ A_inv).max()
    # the first pick is the most extrapolative frame (its γ against model 0's set); every pick had
    # γ above the threshold when it was taken (the later ones against the set grown by the earlier)
    explored = ase.io.read(d / "iter_001" / "explored.xyz", index=":")
    assert frames[3].info["gamma_pick"] == pytest.approx(max(grade(a) for a in explored), rel=1e-6)
    assert all(a.info["gamma_pick"] > cfg.gamma_threshold for a in frames[3:])
    # the exploration frames' γ (the job's, through the evaluator, at the unrounded positions)
    # agrees with numpy's on the positions as written (8 decimals): 1e-6 relative covers both the
    # rounding of B A⁻¹ (κ(A)·ε) and the 1e-8 Å change of the positions
    for a in explored:
        assert a.info["max_gamma"] == pytest.approx(grade(a), rel=1e-6)


def window_raw(**selection) -> dict:
    """The tiny run with a gentler exploration (more, more rattled initial frames; 300 and 600 K,
    unstrained and +1 %) whose frames' γ spread over 0.85-1.9: a window inside them cuts."""
    raw = tiny_raw(initial={"copies": 4, "rattle_A": 0.1, "strain": 0.03, "seed": 1},
                   exploration={"kind": "md", "ensemble": "nvt", "steps": 40, "timestep_fs": 2.0,
                                "temperatures_K": [300, 600], "strains": [0.0, 0.01], "write_every": 2})
    raw["selection"] = dict(raw["selection"], **selection)
    return raw


@pytest.fixture(scope="module")
def window_base(tmp_path_factory):
    """That run without a window: its iteration-1 exploration and picks."""
    tmp = tmp_path_factory.mktemp("window")
    write_seed(tmp)
    cfg = parse_config(window_raw(), tmp)
    Learner(cfg, progress=False, threads=1).run()
    return cfg


def _explored_gamma(cfg) -> np.ndarray:
    return np.array([a.info["max_gamma"] for a in ase.io.read(cfg.output / "iter_001" / "explored.xyz", index=":")])


def test_gamma_window(window_base, tmp_path):
    """`selection.gamma_max`: only frames with threshold < max γ <= gamma_max are candidates. The
    run repeats the base run's iteration 0 and exploration (the same fit and MD seeds), with
    gamma_max at the median γ of the base run's candidates; γ recomputed with numpy from model
    0's active set (as in test_run_end_to_end)."""
    g = _explored_gamma(window_base)
    above = np.sort(g[g > window_base.gamma_threshold])
    gmax = float(above[len(above) // 2])         # the window holds the lower half of the candidates
    assert above[-1] > gmax > window_base.gamma_threshold
    write_seed(tmp_path)
    cfg = parse_config(window_raw(gamma_max=gmax), tmp_path)
    Learner(cfg, progress=False, threads=1).run()
    d = cfg.output
    np.testing.assert_array_equal(_explored_gamma(cfg), g)                  # the same exploration
    m0 = load_model(d / "iter_000" / "model.json", active_set=False)
    A_inv = np.linalg.inv(active_set_rows(m0, activeset_file.read(sidecar_path(d / "iter_000" / "model.json")))["Cu"])
    grade = lambda a: np.abs(m0.descriptors(a.numbers, a.positions, a.cell.array, a.pbc) @ A_inv).max()
    picks = ase.io.read(d / "iter_001" / "selected.xyz", index=":")
    assert picks
    # every pick inside the window (1e-6: γ on the 8-decimal positions, as in test_run_end_to_end)
    for a in picks:
        assert cfg.gamma_threshold < grade(a) <= gmax * (1 + 1e-6)
    ours = ase.io.read(d / "iter_001" / "explored.xyz", index=":")
    inside = [grade(a) for a, x in zip(ours, g) if cfg.gamma_threshold < x <= gmax]
    assert picks[0].info["gamma_pick"] == pytest.approx(max(inside), rel=1e-6)   # the top γ inside
    hist = json.loads((d / "report.json").read_text())["iterations"]
    assert hist[1]["in_window"] == hist[1]["candidates"] == len(inside)


def test_gamma_window_empty_falls_back(window_base, tmp_path):
    """Where no explored frame lies in the window (gamma_max below the smallest γ above the
    threshold), the candidates are all frames above the threshold: the picks are the base run's."""
    g = _explored_gamma(window_base)
    low = g[g > window_base.gamma_threshold].min()
    write_seed(tmp_path)
    cfg = parse_config(window_raw(gamma_max=0.5 * (window_base.gamma_threshold + low)), tmp_path)
    Learner(cfg, progress=False, threads=1).run()
    key = lambda d: [(a.info["run"], a.info["step"]) for a in ase.io.read(d / "iter_001" / "selected.xyz", index=":")]
    assert key(cfg.output) == key(window_base.output) and key(cfg.output)
    hist = json.loads((cfg.output / "report.json").read_text())["iterations"]
    assert hist[1]["in_window"] == 0 and hist[1]["candidates"] == int((g > cfg.gamma_threshold).sum())


def test_report_matches_the_models(runs):
    cfg, _ = runs["a"]
    d = cfg.output
    rep = json.loads((d / "report.json").read_text())
    assert [h["iteration"] for h in rep["iterations"]] == [0, 1]
    frames = ase.io.read(d / "dataset.xyz", index=":")
    assert rep["iterations"][-1]["labels"] == len(frames)
    assert rep["iterations"][1]["selected"] == len(frames) - 3
    assert rep["iterations"][1]["candidates"] >= rep["iterations"][1]["selected"]
    assert (d / "report.png").stat().st_size > 1000
    # training errors recomputed with numpy from the last model on the data set
    model = load_model(d / "iter_001" / "model.json")
    calc = ACECalculator(model, committee=False)
    e_err, f_err = [], []
    for a in frames:
        b = a.copy()
        b.calc = calc
        e_err.append(abs(b.get_potential_energy() - a.get_potential_energy()) / len(a))
        f_err.append(np.abs(b.get_forces() - a.get_forces()).ravel())
    train = rep["iterations"][1]["train"]
    assert train["E_meV_atom"] == pytest.approx(1e3 * np.mean(e_err), rel=1e-6)
    assert train["F_eV_A"] == pytest.approx(np.mean(np.concatenate(f_err)), rel=1e-6)
    assert model.sha256 == rep["iterations"][1]["model_sha256"]


def test_resume_after_interruption(runs):
    (cfg_a, res_a), (cfg_b, res_b) = runs["a"], runs["b"]
    assert runs["b_interrupted"] == 4                     # 3 initial + 1 of iteration 1 kept
    a = ase.io.read(cfg_a.output / "dataset.xyz", index=":")
    b = ase.io.read(cfg_b.output / "dataset.xyz", index=":")
    # the same frames, once each (the half-written one dropped), as the uninterrupted run
    assert [(x.info["iteration"], x.info["pick"]) for x in a] == [(x.info["iteration"], x.info["pick"]) for x in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.positions, y.positions)
        assert x.get_potential_energy() == y.get_potential_energy()
    assert res_a["labels"] == res_b["labels"]
    # a finished run resumes to nothing; another configuration in the same directory is refused
    before = (cfg_b.output / "dataset.xyz").read_bytes()
    again = Learner(cfg_b, progress=False, threads=1).run()
    assert again["labels"] == res_b["labels"] and (cfg_b.output / "dataset.xyz").read_bytes() == before
    other = parse_config(tiny_raw(budget=21), cfg_b.output.parent)
    with pytest.raises(LearnError, match="another configuration"):
        Learner(other, progress=False)


def test_cli(runs, capsys):
    """`aceserver learn` on the finished run's configuration resumes to its end and says so; a bad
    configuration is a clear error (exit status 2), not a traceback."""
    import yaml
    from aceserver import cli
    cfg, res = runs["b"]
    path = cfg.output.parent / "learn.yaml"
    path.write_text(yaml.safe_dump(tiny_raw()))
    assert cli.main(["learn", str(path), "--quiet"]) == 0
    assert f"{res['labels']} labelled frames over 2 iterations" in capsys.readouterr().out
    path.write_text(yaml.safe_dump(tiny_raw(budget=21)))
    assert cli.main(["learn", str(path), "--quiet"]) == 2
    assert "another configuration" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(tiny_raw(budget=2, output="other")))
    assert cli.main(["learn", str(path), "--quiet"]) == 2
    assert "more than the budget of 2" in capsys.readouterr().err
    ase.io.write(cfg.output.parent / "ni.xyz", bulk("Ni", "fcc", a=3.52, cubic=True), format="extxyz")
    path.write_text(yaml.safe_dump(tiny_raw(seeds=["seed.xyz", "ni.xyz"], output="other")))
    assert cli.main(["learn", str(path), "--quiet"]) == 2
    assert "seed structure 1 holds Ni" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(tiny_raw(selection={"gamma_threshold": "high"})))
    assert cli.main(["learn", str(path)]) == 2
    assert "selection.gamma_threshold" in capsys.readouterr().err


def test_complete_prefix():
    frame = b"2\nc\nCu 0 0 0\nCu 1 1 1\n"
    assert complete_prefix(frame * 2) == 2 * len(frame)
    for cut in range(1, len(frame)):
        assert complete_prefix(frame + frame[:cut]) == len(frame)


# ---- selection --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_model():
    from aceserver import ace1_model
    m = ace1_model(elements=["Cu"], order=2, totaldegree=6, rcut=4.5, E0={"Cu": 0.0})
    m.parameters = np.zeros(m.length_basis)
    return m


def _rattled(seed, amp, n=(2, 1, 1)):
    a = bulk("Cu", "fcc", a=3.615, cubic=True) * n
    a.positions += np.random.default_rng(seed).normal(0, amp, a.positions.shape)
    return a


def test_select_spreads_picks(small_model):
    """Three copies of the most extrapolative frame X and one other frame Y: the top-γ rule would
    label X and a copy; after X joins the active set its copies have γ ≤ 1 + tol, so Y is next."""
    train = [_rattled(s, 0.02) for s in range(6)]
    A = {"Cu": build_active_set(small_model, train).elements["Cu"].active_set.rows}
    A_inv = np.linalg.inv(A["Cu"])
    X, Y = _rattled(100, 0.25), _rattled(101, 0.12)
    cands = [Y, X, X.copy(), X.copy()]
    g = [np.abs(r["Cu"] @ A_inv).max() for r in frame_rows(small_model, cands)]
    assert g[1] > g[0] > 1.5                      # X is the most extrapolative, Y extrapolates too
    picks = select(small_model, cands, A, 2, threshold=1.0)
    assert picks[0][0] == 1 and picks[0][1] == pytest.approx(g[1], rel=1e-8)
    assert picks[1][0] == 0                       # Y, not a copy of X
    # asking for more: the copies are never picked (γ ≤ 1 + tol after X), so only 2 come back
    assert [i for i, _ in select(small_model, cands, A, 4, threshold=1.0 + 1e-6)] == [1, 0]
    # nothing above the threshold: nothing picked
    assert select(small_model, cands, A, 3, threshold=max(g) + 1) == []


# ---- labellers -------------------------------------------------------------------------------

EMT_SCRIPT = """
import sys, ase.io
from ase.calculators.emt import EMT
a = ase.io.read(sys.argv[1])
a.calc = EMT()
a.get_potential_energy(); a.get_forces()
ase.io.write(sys.argv[2], a, format="extxyz")
"""


def test_command_labeller_matches_ase(tmp_path):
    script = tmp_path / "emt.py"
    script.write_text(EMT_SCRIPT)
    a = _rattled(5, 0.05)
    a.positions = np.round(a.positions, 8)     # what the input file holds (8 decimals)
    got = CommandLabeller(f"{PY} {script} {{input}} {{output}}", timeout_s=60).label(a)
    ref = a.copy()
    ref.calc = EMT()
    # energy and stress come back in full, forces with 8 decimals; positions may differ by an ulp
    assert got.energy == pytest.approx(ref.get_potential_energy(), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(got.forces, ref.get_forces(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(got.stress, ref.get_stress(voigt=True), rtol=0, atol=1e-12)


def test_command_labeller_failures(tmp_path):
    a = _rattled(5, 0.05)
    with pytest.raises(LabelError, match="status 3.*broken input") as err:
        CommandLabeller("echo broken input >&2; exit 3").label(a)
    assert err.value.kind == "exit"
    nan = tmp_path / "nan.py"
    nan.write_text(EMT_SCRIPT.replace("ase.io.write(", "a.calc.results['energy'] = float('nan'); ase.io.write("))
    with pytest.raises(LabelError, match="NaN") as err:
        CommandLabeller(f"{PY} {nan} {{input}} {{output}}").label(a)
    assert err.value.kind == "nan"
    with pytest.raises(LabelError) as err:
        CommandLabeller("true").label(a)
    assert err.value.kind == "output"
    # timeout: the command and what it started in the background are killed
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    with pytest.raises(LabelError, match="longer than 1 s") as err:
        CommandLabeller(f"sleep 60 & echo $! > {pidfile}; wait", timeout_s=1).label(a)
    assert err.value.kind == "timeout" and time.monotonic() - t0 < 30
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the timed-out command's child is still running")


def test_loop_reports_and_skips_or_retries_failures(tmp_path):
    """Iteration 0 with a command labeller (EMT) that fails on the second frame (exit 1) and
    returns NaN on the third: with `skip` both are reported with the frame and skipped, the
    first is labelled; with `retry` (the failures happen only on a frame's first try) all three
    are labelled, each failure reported once."""
    write_seed(tmp_path)
    script = tmp_path / "flaky.py"
    script.write_text(EMT_SCRIPT.replace("a = ase.io.read(sys.argv[1])", """a = ase.io.read(sys.argv[1])
import hashlib, pathlib
seen = pathlib.Path(sys.argv[3]) / hashlib.sha256(a.positions.tobytes()).hexdigest()
first = not seen.exists(); seen.touch()
count = len(list(seen.parent.iterdir()))
if first and count == 2: sys.exit(1)
if first and count == 3: a.calc = EMT(); a.get_potential_energy(); a.calc.results['forces'][0, 0] = float('nan'); ase.io.write(sys.argv[2], a, format='extxyz'); sys.exit(0)
"""))
    for mode, labelled in (("skip", 1), ("retry", 3)):
        marks = tmp_path / f"marks-{mode}"
        marks.mkdir()
        raw = tiny_raw(max_iterations=1, output=f"out-{mode}", labeller={
            "command": f"{PY} {script} {{input}} {{output}} {marks}", "timeout_s": 60, "on_failure": mode})
        cfg = parse_config(raw, tmp_path)
        result = Learner(cfg, progress=False, threads=1).run()
        frames = ase.io.read(cfg.output / "dataset.xyz", index=":")
        assert len(frames) == labelled == result["labels"]
        failures = [json.loads(x) for x in (cfg.output / "failures.jsonl").read_text().splitlines()]
        assert [(f["iteration"], f["kind"], f["attempt"]) for f in failures] == [(0, "exit", 1), (0, "nan", 1)]
        assert {f["action"] for f in failures} == {"skipped" if mode == "skip" else "retry"}
        assert [f["pick"] for f in failures] == [1, 2] and all(f["run"] == "initial" for f in failures)
        for a in frames:                         # the labels are EMT's
            ref = a.copy()
            ref.calc = EMT()
            assert a.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-12)


# ---- configuration --------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"bogus": 1}, "unknown entry"),
    ({"labeller": {"model": str(TEACHER), "command": "x"}}, "exactly one"),
    ({"labeller": {"calculator": "ase.calculators.emt"}}, "module:Class"),
    ({"labeller": {"model": str(TEACHER), "on_failure": "ignore"}}, "skip' or 'retry"),
    ({"selection": {"gamma_threshold": 5, "gamma_halt": 4}}, "gamma_halt"),
    ({"selection": {"gamma_threshold": 0.5}}, "gamma_threshold"),
    ({"selection": {"gamma_threshold": 2, "gamma_max": 2}}, "gamma_max"),
    ({"selection": {"gamma_threshold": 2, "gamma_halt": 10, "gamma_max": 11}}, "gamma_max"),
    ({"exploration": {"ensemble": "npe"}}, "ensemble"),
    ({"exploration": {"steps": 1.5}}, "integer"),
    ({"budget": 0}, "budget"),
    ({"labeller": {"model": str(TEACHER), "timeout_s": 5}}, "timeout_s"),
    ({"labeller": {"command": "x", "timeout_s": 0}}, "timeout_s"),
    ({"seeds": "missing.xyz"}, "missing.xyz"),
    ({"solver": {"name": "blr"}, "weights": {"default": {"Q": 1}}}, "weights"),
])
def test_config_errors(tmp_path, change, message):
    write_seed(tmp_path)
    with pytest.raises(LearnConfigError, match=message):
        parse_config(tiny_raw(**change), tmp_path)


def test_incremental_model_equals_a_fit_of_all_data(runs):
    """The loop's last model (iteration 0 fitted with its least-squares state, iteration 1 an
    `incremental.update` with the new frames) predicts what `aceserver fit` of the whole data set
    from scratch predicts. Both solve the same BLR problem (the same rows, weights, prior, seed);
    the update's factors are a different but backward-stable QR of those rows, so predictions agree
    to κ·ε of the regularised (BLR posterior) system relative to their scale. Measured: 1e-14 of
    the energy, 1e-13 eV/Å; the bound 1e-9 allows κ up to ~1e6 on any CPU and thread count."""
    import io
    from aceserver.fitting.workflow import run_fit
    cfg, _ = runs["a"]
    ref, _ = run_fit(cfg.fit_config(cfg.output / "dataset.xyz"), output=None, plots=False, out=io.StringIO())
    got = load_model(cfg.output / "iter_001" / "model.json", active_set=False)
    assert got.metadata["fit"]["assembly"]["path"] == "incremental"
    for a in ase.io.read(cfg.output / "dataset.xyz", index=":"):
        r = ref.evaluate(a.numbers, a.positions, a.cell.array, a.pbc)
        g = got.evaluate(a.numbers, a.positions, a.cell.array, a.pbc)
        assert abs(g.energy - r.energy) <= 1e-9 * abs(r.energy)
        np.testing.assert_allclose(g.forces, r.forces, rtol=0, atol=1e-9 * max(1.0, np.abs(r.forces).max()))


def test_plain_progress_lines():
    """Without tqdm: one line per tenth of the work (and the last), never more."""
    import io
    from aceserver.learning.progress import _Plain
    buf = io.StringIO()
    p = _Plain(25, "exploring", buf)
    for _ in range(25):
        p.update(1)
    # a line when ⌊10·done/25⌋ first reaches 0, 1, ..., 10: at 1, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25
    assert buf.getvalue().splitlines() == [f"exploring: {d}/25" for d in (1, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25)]


def test_exploration_run_that_fails_is_reported(small_model, tmp_path):
    """A run whose structure the evaluator refuses (two atoms on top of each other) is `failed`
    with the evaluator's reason; the other runs go on and keep their frames."""
    from aceserver.learning import explore
    from aceserver.jobs.spec import MDJob, MDParameters
    train = [_rattled(s, 0.02) for s in range(6)]
    build = build_active_set(small_model, train)
    small_model.attach_active_set(build.inverses())
    bad = _rattled(7, 0.0)
    bad.positions[1] = bad.positions[0]
    spec = MDJob(kind="md", write_every=2, check_every=2, record=["gamma"],
                 parameters=MDParameters(ensemble="nvt", steps=6, temperature_K=300, seed=1))
    frames, runs = explore.explore(small_model, [("bad", bad, spec), ("good", _rattled(8, 0.02), spec)])
    assert runs[0]["state"] == "failed" and "on top of each other" in runs[0]["reason"]
    assert runs[0]["frames"] == 0 and runs[1]["state"] == "done" and runs[1]["frames"] == 4
    assert [a.info["run"] for a in frames] == ["good"] * 4 and all("max_gamma" in a.info for a in frames)
    small_model.active_set = None


def test_exploration_plan(tmp_path):
    """One run per seed × strain × temperature × pressure (pressures only where they act: npt, and
    relax with cell_filter), the cell and positions scaled by 1 + strain, a distinct MD seed per
    run that a resume reproduces, γ recorded and the halt on max γ set."""
    from aceserver.learning import explore
    write_seed(tmp_path)
    seed = ase.io.read(tmp_path / "seed.xyz")
    ex = {"kind": "md", "ensemble": "npt", "steps": 10, "temperatures_K": [300, 900],
          "pressures_GPa": [0, 2], "strains": [-0.02, 0.03]}
    cfg = parse_config(tiny_raw(exploration=ex), tmp_path)
    plan = explore.runs(cfg, [seed], 4)
    assert len(plan) == 8 and len({name for name, _, _ in plan}) == 8
    assert len({spec.parameters.seed for _, _, spec in plan}) == 8
    assert [spec.parameters.seed for _, _, spec in explore.runs(cfg, [seed], 4)] == \
        [spec.parameters.seed for _, _, spec in plan]
    for name, atoms, spec in plan:
        strain = -0.02 if "strain-0.02" in name else 0.03
        np.testing.assert_allclose(atoms.cell.array, seed.cell.array * (1 + strain), rtol=1e-15)
        np.testing.assert_allclose(atoms.positions, seed.positions * (1 + strain), rtol=1e-12, atol=1e-12)
        assert spec.halt.max_gamma == cfg.gamma_halt and spec.record == ["gamma"]
        assert spec.parameters.ensemble == "npt"
    assert sorted({(s.parameters.temperature_K, s.parameters.pressure_GPa) for _, _, s in plan}) == \
        [(300, 0), (300, 2), (900, 0), (900, 2)]
    nvt = parse_config(tiny_raw(exploration=dict(ex, ensemble="nvt")), tmp_path)
    assert len(explore.runs(nvt, [seed], 1)) == 4                  # pressures do not act in nvt
    relax = parse_config(tiny_raw(exploration={"kind": "relax", "cell_filter": True, "steps": 5,
                                               "pressures_GPa": [0, 1], "temperatures_K": [300, 900]}), tmp_path)
    plan = explore.runs(relax, [seed], 1)
    assert len(plan) == 2 and all(s.kind == "relax" and s.parameters.cell_filter for _, _, s in plan)


def test_calculator_labeller(tmp_path):
    from aceserver.learning.labellers import CalculatorLabeller
    a = _rattled(9, 0.05)
    got = CalculatorLabeller("ase.calculators.emt:EMT", {}).label(a)
    ref = a.copy()
    ref.calc = EMT()
    assert got.energy == ref.get_potential_energy()
    np.testing.assert_array_equal(got.forces, ref.get_forces())
    np.testing.assert_array_equal(got.stress, ref.get_stress(voigt=True))
    with pytest.raises(ValueError, match="cannot be imported"):
        CalculatorLabeller("ase.calculators.emt:NoSuchCalculator")
    with pytest.raises(ValueError, match="failed: TypeError"):
        CalculatorLabeller("math:sqrt", {"no_such_keyword": 1})
    with pytest.raises(ValueError, match="not an ASE calculator"):
        CalculatorLabeller("builtins:dict")
