"""The run's report: `report.json` (one entry per iteration: labels, exploration γ, candidates,
picks, label failures, training and test errors) and `report.png` (matplotlib, Agg): errors against
the number of labels, and γ per iteration.

Errors are mean absolute errors: energy meV/atom, forces eV/Å. γ is dimensionless.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from aceserver.fitting.fit_model import jsonable
from aceserver.io.durable import replace_durably


def write(directory, history: list[dict], stopped: str | None) -> tuple[Path, Path | None]:
    """Write report.json (atomically) and report.png (when matplotlib is installed)."""
    directory = Path(directory)
    doc = {"units": {"E": "meV/atom (MAE)", "F": "eV/Å (MAE)", "gamma": "dimensionless"},
           "stopped": stopped, "iterations": history}
    path = directory / "report.json"
    text = json.dumps(jsonable(doc), indent=1)
    replace_durably(lambda tmp: tmp.write_text(text), path)
    return path, plot(directory / "report.png", history)


def plot(path, history: list[dict]) -> Path | None:
    try:
        import matplotlib          # optional, as for parity plots
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fitted = [h for h in history if "labels" in h]
    if not fitted:
        return None
    fig, (ax_e, ax_f, ax_g) = plt.subplots(1, 3, figsize=(13, 3.8))
    labels = [h["labels"] for h in fitted]
    for key, name in (("train", "training"), ("test", "test")):
        if all(key in h for h in fitted):
            ax_e.plot(labels, [h[key]["E_meV_atom"] for h in fitted], "o-", label=name)
            ax_f.plot(labels, [h[key]["F_eV_A"] for h in fitted], "o-", label=name)
    for ax, unit in ((ax_e, "energy MAE (meV/atom)"), (ax_f, "force MAE (eV/Å)")):
        ax.set_xlabel("labelled frames")
        ax.set_ylabel(unit)
        ax.set_yscale("log")
        ax.legend()
    explored = [h for h in history if "max_gamma_explored" in h]
    if explored:
        it = [h["iteration"] for h in explored]
        ax_g.semilogy(it, [max(h["max_gamma_explored"], 1e-3) for h in explored], "o-",
                      label="largest γ explored")
        picked = [(h["iteration"], g) for h in explored for g in h.get("gamma_picked", [])]
        if picked:
            x, y = np.array(picked).T
            ax_g.semilogy(x, y, ".", label="γ of the picks")
        ax_g.set_xlabel("iteration")
        ax_g.set_ylabel("γ")
        ax_g.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
