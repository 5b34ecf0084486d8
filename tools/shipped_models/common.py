"""What the tools of this package share: where the shipped models live, the error table of a card,
equality of candidate specs, the card's line on the active set, and timing models alternately."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aceserver.benchmarking import build_structure, time_calls

from aceserver.io import activeset_file
from aceserver.io.activeset_file import sidecar_path

MODELS = Path(__file__).resolve().parents[2] / "models"     # <repository>/models: one folder per model


def same(a, b) -> bool:
    """Equal JSON-like specs (candidates, priors, weights), whatever the key order."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _fmt(v, scale, digits=4):
    return "–" if v is None else f"{v * scale:.{digits}f}"


def error_rows(errs: dict) -> list[str]:
    """A card's Markdown table of RMSE and MAE per config_type (E and V in meV/atom, F in eV/Å)
    from an error table ``{"rmse": {ct: {"E", "F", "V"}}, "mae": ...}`` in eV/atom, eV/Å, eV/atom."""
    rows = ["| config_type | E RMSE (meV/atom) | F RMSE (eV/Å) | V RMSE (meV/atom) | E MAE (meV/atom) | F MAE (eV/Å) | V MAE (meV/atom) |",
            "|---|---|---|---|---|---|---|"]
    for ct, r in errs["rmse"].items():
        m = errs["mae"][ct]
        rows.append(f"| {ct} | {_fmt(r['E'], 1e3, 3)} | {_fmt(r['F'], 1)} | {_fmt(r['V'], 1e3, 3)} | "
                    f"{_fmt(m['E'], 1e3, 3)} | {_fmt(m['F'], 1)} | {_fmt(m['V'], 1e3, 3)} |")
    return rows


def active_set_line(model_file: Path) -> str | None:
    """The card's line on the model's active set (`<stem>.activeset.npz` beside it), or None."""
    path = sidecar_path(model_file)
    if not path.is_file():
        return None
    env = activeset_file.read(path)
    parts = []
    for el, n, m, seen in zip(env.elements, env.atom_counts, env.floor_counts, env.atoms_read):
        parts.append(f"{el}: L {n + m} = {n} atoms chosen of {seen}" + (
            f" + {m} floor rows (directions the data do not span)" if m else ""))
    return (f"- active set (extrapolation grade γ): `{path.name}`, MaxVol over the training atoms "
            f"({'; '.join(parts)}; floor {env.floor:g}); rebuild with "
            "`python -m tools.shipped_models.active_sets "
            + ("--data-dir DIR " if model_file.parent.name.startswith("zuo-") else "")
            + f"{model_file.parent.name}`")


def time_alternating(el: str, models: list, rounds: int = 5, calls: int = 10) -> tuple[str, list[float]]:
    """(structure, median µs/atom of each model): energy + forces + virial on one cell (diamond64
    for Si and Ge, else fcc108), one numba thread, the models timed alternately (forward, then
    reversed order, round by round) so that a change of machine load hits all of them alike."""
    import numba
    numba.set_num_threads(1)
    name = "diamond64" if el in ("Si", "Ge") else "fcc108"
    at = build_structure(name, [el])
    times = [[] for _ in models]
    idx = list(range(len(models)))
    for r in range(rounds):
        for i in (idx if r % 2 == 0 else idx[::-1]):
            m = models[i]
            times[i].append(time_calls(lambda: m.evaluate(at.numbers, at.positions, at.cell[:], at.pbc), calls)
                            / len(at) * 1e6)
    return name, [float(np.median(t)) for t in times]
