"""The Zuo et al. (2020) selection recipe: the candidate grid, the targets and the score.

Targets are the best published test-set MAE, energy (eV/atom) and forces (eV/Å). A candidate's score
is the worse of its two mean ratios, max(CV E MAE / E target, CV F MAE / F target), with its
standard error over the folds (:func:`aceserver.fitting.selection.target_score`, ``combine="worse"``).
"""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import numpy as np

from aceserver.basis.bondlengths import pair_r0
from aceserver.fitting import data, selection
from aceserver.fitting.selection import fold_ratios, target_score

CHAIN = [(3, [12, 10, 8]), (3, [16, 12, 10]), (3, [20, 16, 12]), (3, [24, 20, 16]),
         (4, [24, 20, 16, 12]), (4, [26, 22, 18, 14])]
STAGE1 = 4                     # stage 1 on CHAIN[:STAGE1]; CHAIN[STAGE1 - 1] ranks cutoffs and pairs
CUTOFFS = (2.25, 2.5, 2.75)    # rcut in bond lengths
PRIORS = ({"name": "algebraic", "p": 2}, {"name": "algebraic", "p": 4}, {"name": "algebraic", "p": 6},
          {"name": "exponential", "wl": 2.0, "wn": 3.0})
E_WEIGHTS = (3.0, 10.0, 30.0, 100.0, 300.0)
N_STAGE2 = 3
K, SEED, LC_PARTS = 5, 0, 5
STUDY = ("Si", "Cu")
COMBINE = "worse"              # score: the worse of the two mean CV MAE / target ratios
# best published test-set MAE: energy (eV/atom), forces (eV/Å)
TARGETS = {"Ni": (0.33e-3, 0.010), "Cu": (0.22e-3, 0.005), "Li": (0.17e-3, 0.005),
           "Mo": (2.24e-3, 0.09), "Si": (2.21e-3, 0.06), "Ge": (1.79e-3, 0.05)}
SOURCE = ("ACEData repository (github.com/ACEsuit/ACEData), minibenchmarks/ZuoEtAl2020.tar.gz; "
          "unpack so that <data dir>/ZuoEtAl2020/<El>_train.xyz exists (see models/README.md)")


def basis_name(order, td) -> str:
    return f"order {order}, totaldegree {list(td)}"


def parse_basis(name: str) -> tuple[int, list[int]]:
    """The inverse of :func:`basis_name`: 'order 3, totaldegree [25, 21, 17]' -> (3, [25, 21, 17])."""
    m = re.fullmatch(r"order (\d+), totaldegree \[([\d, ]+)\]", name)
    if not m:
        raise ValueError(f"not a basis name: {name!r}")
    return int(m.group(1)), [int(x) for x in m.group(2).split(",")]


def score(result, targets: tuple[float, float]) -> tuple[float, float]:
    """(mean score, standard error) of a CV result against (E target, F target)."""
    return target_score(result, targets, combine=COMBINE)


def fold_score(result, targets: tuple[float, float]):
    """Per fold (E MAE / E target, F MAE / F target): the paired rule checks both."""
    return fold_ratios(result, targets)


def rcut_of(el: str, factor: float) -> float:
    """``factor`` bond lengths of ``el`` in Å."""
    return float(factor * pair_r0(el, el))


def training_split(el: str, data_dir: Path, seed: int = SEED):
    """(file, configurations, K seeded folds, indices of the isolated atoms, kept in every training
    set) of the element's Zuo training split ``DIR/ZuoEtAl2020/<El>_train.xyz`` (the test split is
    never read). ``seed`` other than SEED gives fresh folds (zuo_nested's confirmation runs)."""
    path = Path(data_dir) / "ZuoEtAl2020" / f"{el}_train.xyz"
    if not path.is_file():
        raise SystemExit(f"missing data file {path}; get it from: {SOURCE}")
    train = data.read_configs(path, data.Keys(energy="energy", force="force"), elements=[el])
    folds = selection.kfold(train, K, seed)
    always = np.array([i for i, c in enumerate(train) if c.natoms == 1], dtype=np.int64)
    return path, train, folds, always


def add_data_dir(ap) -> None:
    """The tools' ``--data-dir`` option (default $ACESERVER_DATA)."""
    ap.add_argument("--data-dir", default=os.environ.get("ACESERVER_DATA"),
                    help="directory holding ZuoEtAl2020/<El>_train.xyz (default $ACESERVER_DATA)")


def elements_parser(module: str, doc: str, **elements_kw) -> argparse.ArgumentParser:
    """The Zuo tools' common command line: elements, ``--data-dir`` and ``--threads`` (assembly
    threads, default all CPUs); ``elements_kw`` overrides the elements argument's nargs/default."""
    ap = argparse.ArgumentParser(prog=f"python -m tools.shipped_models.{module}", description=doc.split("\n\n")[0])
    ap.add_argument("elements", choices=sorted(TARGETS), **({"nargs": "+"} | elements_kw))
    add_data_dir(ap)
    ap.add_argument("--threads", type=int, default=None, help="assembly threads (default: all CPUs)")
    return ap


def data_dir_of(ap, args) -> Path:
    """``--data-dir`` as a path, or the parser's error when neither it nor $ACESERVER_DATA is set."""
    if not args.data_dir:
        ap.error("give --data-dir DIR or set ACESERVER_DATA (the directory holding ZuoEtAl2020/)")
    return Path(args.data_dir)


# force-magnitude weights (the screen zuo_weights, zuo_nested's weighted grid): the Zuo files have no
# config_type, so configurations are grouped by RMS force and weighted per group
N_GROUPS = 4


def force_groups(train) -> tuple[np.ndarray, list[float], float]:
    """Each configuration's group (0..N_GROUPS-1, quartiles of its RMS force, eV/Å), the groups' median
    RMS forces and the median of all; labels each configuration's config_type f"rms{group}" as a fit
    configuration's ``data.force_groups: 4`` does (`aceserver.fitting.data.group_by_force`)."""
    data.group_by_force(train, N_GROUPS)
    rms = np.array([data.rms_force(c) for c in train])
    group = np.array([int(c.config_type[3:]) for c in train])
    return group, [float(np.median(rms[group == g])) for g in range(N_GROUPS)], float(np.median(rms))


def weights_of(beta: float, w_E: float, medians: list[float], overall: float) -> dict:
    w = {f"rms{g}": {"E": w_E, "F": float((overall / m) ** beta), "V": 1.0} for g, m in enumerate(medians)}
    w["default"] = {"E": w_E, "F": 1.0, "V": 1.0}
    return w
