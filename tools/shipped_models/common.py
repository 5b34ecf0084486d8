"""What the tools of this package share: where the shipped models live, the error table of a card,
and equality of candidate specs."""
from __future__ import annotations

import json
from pathlib import Path

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
