"""Weights by force magnitude (`data.force_groups` in a fit configuration, `data.group_by_force`).

References: the groups against a rank count of numpy RMS forces read straight from the file (equal
sizes, every RMS force of a group at most every one of the next); a fit with `force_groups` against
the same fit of a file whose config_type fields were written with those labels (the same
configurations, labels and order, so the same system: parameters equal bit for bit); and the
weights take effect (the parameters move by far more than rounding when a group's weight changes).
"""
from __future__ import annotations

import io
import re
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml

from aceserver.fitting import data
from aceserver.fitting.config import FitConfigError, load_config
from aceserver.fitting.workflow import load_data, run_fit

DATA = Path(__file__).parent / "data"
N_GROUPS = 3


def untyped_text() -> str:
    """Si_tiny.xyz without its config_type fields (the Zuo files have none)."""
    return re.sub(r" config_type=\S+", "", (DATA / "Si_tiny.xyz").read_text())


def rms_from_file(path) -> np.ndarray:
    return np.array([np.sqrt(np.mean(a.arrays["dft_force"] ** 2)) for a in ase.io.read(path, ":")])


def rank_groups(rms: np.ndarray, n: int) -> np.ndarray:
    """Equal-sized groups by rank (ties in rms do not occur in this data)."""
    order = np.argsort(rms, kind="stable")
    g = np.empty(len(rms), dtype=int)
    g[order] = np.arange(len(rms)) * n // len(rms)
    return g


def fit_yaml(tmp_path, train: str, groups: int | None, weights: dict) -> Path:
    cfg = {"model": {"elements": ["Si"], "order": 3, "totaldegree": 8, "rcut": 5.5}, "E0": {"Si": -158.54496821},
           "data": {"train": train, "energy_key": "dft_energy", "force_key": "dft_force", "virial_key": "dft_virial",
                    **({"force_groups": groups} if groups else {})},
           "weights": weights, "prior": {"name": "algebraic", "p": 4}, "solver": {"name": "qr", "lambda": 1e-3},
           "output": {"model": "m.json", "plots": None, "active_set": False}}
    p = tmp_path / f"fit_{len(list(tmp_path.glob('fit_*.yaml')))}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


@pytest.fixture
def untyped(tmp_path):
    p = tmp_path / "Si_untyped.xyz"
    p.write_text(untyped_text())
    return p


def test_groups_are_equal_sized_rank_groups(untyped):
    configs = data.read_configs(untyped, data.Keys(energy="dft_energy", force="dft_force", virial="dft_virial"))
    rms = rms_from_file(untyped)
    assert len(np.unique(rms)) == len(rms)
    edges = data.group_by_force(configs, N_GROUPS)
    got = np.array([int(c.config_type[3:]) for c in configs])
    assert [c.config_type[:3] for c in configs] == ["rms"] * len(configs)
    # equal sizes up to one, and ordered: a group's largest RMS force below the next group's smallest
    assert sorted(np.bincount(got).tolist()) == sorted(np.bincount(rank_groups(rms, N_GROUPS)).tolist())
    for g in range(N_GROUPS - 1):
        assert rms[got == g].max() < rms[got == g + 1].min()
    # other configurations (validation) are labelled by the training set's edges
    again = data.read_configs(untyped, data.Keys(energy="dft_energy", force="dft_force"))
    data.group_by_force(again, N_GROUPS, edges)
    assert [c.config_type for c in again] == [c.config_type for c in configs]


def test_bad_uses_are_refused(untyped, tmp_path):
    typed = data.read_configs(DATA / "Si_tiny.xyz", data.Keys(energy="dft_energy", force="dft_force"))
    with pytest.raises(ValueError, match="config_type.*'bt'"):
        data.group_by_force(typed, 3)
    configs = data.read_configs(untyped, data.Keys(energy="dft_energy", force="dft_force"))
    for n in (1, 0, 2.5, True, 101):
        with pytest.raises(ValueError, match="force_groups must be an integer from 2 to 100"):
            data.group_by_force(configs, n)
    for n in (1, "4", 3.0):
        with pytest.raises(FitConfigError, match="'data.force_groups' must be an integer"):
            load_config(fit_yaml(tmp_path, untyped.name, n, {"default": {"E": 30}}))
    with pytest.raises(FitConfigError, match="'data.force_groups'.*config_type"):
        load_data(load_config(fit_yaml(tmp_path, str(DATA / "Si_tiny.xyz"), 3, {"default": {"E": 30}})))


def test_fit_equals_the_hand_labelled_file(untyped, tmp_path):
    configs = data.read_configs(untyped, data.Keys(energy="dft_energy", force="dft_force"))
    data.group_by_force(configs, N_GROUPS)      # the labels (their definition: the test above)
    frames = iter(int(c.config_type[3:]) for c in configs)
    labelled = tmp_path / "Si_labelled.xyz"
    # write config_type=rms<g> into each frame's comment line (the line after the atom count)
    lines, out = untyped_text().splitlines(keepends=True), io.StringIO()
    i = 0
    while i < len(lines):
        n = int(lines[i])
        out.write(lines[i])
        out.write(lines[i + 1].rstrip("\n") + f" config_type=rms{next(frames)}\n")
        out.writelines(lines[i + 2:i + 2 + n])
        i += 2 + n
    labelled.write_text(out.getvalue())
    weights = {"default": {"E": 30, "F": 1, "V": 1}, "rms0": {"E": 30, "F": 3.0, "V": 1},
               "rms2": {"E": 30, "F": 0.3, "V": 1}}

    def fit(train, groups_, w):
        cfg = load_config(fit_yaml(tmp_path, train, groups_, w))
        model, _ = run_fit(cfg, output=tmp_path / "m.json", plots=False, progress=False, threads=1,
                           out=io.StringIO())
        return model.parameters.copy()
    by_option = fit(untyped.name, N_GROUPS, weights)
    by_hand = fit(labelled.name, None, weights)
    assert np.array_equal(by_option, by_hand)
    # the groups' weights take effect: unweighted groups give another model (far beyond rounding)
    plain = fit(untyped.name, N_GROUPS, {"default": {"E": 30, "F": 1, "V": 1}})
    assert np.linalg.norm(plain - by_option) > 1e-3 * np.linalg.norm(plain)
