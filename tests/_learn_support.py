"""Helpers for the learning-service tests: a small Si model fitted on part of Si_tiny.xyz, labelled
structures as request documents, and `ScratchFitter`, a fitter with `fitting.incremental`'s four
functions that refits FROM SCRATCH (`acefit`, QR) on every batch it holds. It is the independent
reference the service's models are compared with, and it can be told to fail (config_type "fail":
a RuntimeError, a failed refit) or to refuse a batch as input (config_type "bad": a FitDataError).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aceserver.ace1.model import ACEModel
from aceserver.fitting import acefit, read_configs
from aceserver.fitting.data import Config, FitDataError, Keys

DATA = Path(__file__).parent / "data" / "Si_tiny.xyz"
KEYS = Keys("dft_energy", "dft_force", "dft_virial")
SOLVER = {"name": "qr"}
WEIGHTS = {"default": {"E": 30.0, "F": 1.0, "V": 1.0}}


def si_data() -> list[Config]:
    """Si_tiny.xyz without the isolated atom (E0 is set on the model): 52 labelled Si configurations."""
    return [c for c in read_configs(DATA, KEYS) if c.natoms > 1]


def refit(model, configs: list[Config]):
    """A copy of `model` fitted from scratch on `configs` (QR, no committee)."""
    new = ACEModel.from_document(model.to_document())
    acefit(new, configs, weights=WEIGHTS, solver=SOLVER, compute_errors=False, threads=1, progress=False)
    new.metadata = {"fit": {"note": "test fit from scratch"}}
    return new


@dataclass
class ScratchState:
    data: list[dict]
    configs: list[list[Config]]
    model_sha256: str
    fit: dict = field(default_factory=lambda: {"solver": SOLVER, "weights": WEIGHTS})

    @property
    def data_version(self) -> int:
        return len(self.data)


def _config_doc(c: Config) -> dict:
    return {"numbers": c.numbers.tolist(), "positions": c.positions.tolist(), "cell": c.cell.tolist(),
            "pbc": c.pbc.tolist(), "energy": c.energy, "forces": c.forces.tolist(),
            "virial": None if c.virial is None else c.virial.tolist(), "config_type": c.config_type}


def _config(d: dict) -> Config:
    return Config(numbers=np.array(d["numbers"]), positions=np.array(d["positions"]), cell=np.array(d["cell"]),
                  pbc=np.array(d["pbc"]), energy=d["energy"], forces=np.array(d["forces"]),
                  virial=None if d["virial"] is None else np.array(d["virial"]), config_type=d["config_type"])


class ScratchFitter:
    """`state_path`, `load_state`, `save_state`, `update_batches` as `fitting.incremental` has them."""

    def __init__(self):
        self.updates = 0

    @staticmethod
    def state_path(model_path) -> Path:
        p = Path(model_path)
        return p.with_name(p.stem + ".fitstate.npz")

    @staticmethod
    def save_state(state: ScratchState, path) -> None:
        doc = {"data": state.data, "model_sha256": state.model_sha256,
               "configs": [[_config_doc(c) for c in batch] for batch in state.configs]}
        Path(path).write_text(json.dumps(doc))

    @staticmethod
    def load_state(path, model_sha256=None) -> ScratchState:
        doc = json.loads(Path(path).read_text())
        if model_sha256 is not None and doc["model_sha256"] != model_sha256:
            raise ValueError(f"the state belongs to model {doc['model_sha256'][:12]}, not {model_sha256[:12]}")
        return ScratchState(doc["data"], [[_config(c) for c in b] for b in doc["configs"]], doc["model_sha256"])

    def update_batches(self, model, state: ScratchState, batches, threads=None, progress=None):
        """`batches`: [(name, sha256, configs)], one data version each; one fit for all."""
        if any(c.config_type == "fail" for _, _, cs in batches for c in cs):
            raise RuntimeError("refused by the test fitter (config_type 'fail')")
        if any(c.config_type == "bad" for _, _, cs in batches for c in cs):
            raise FitDataError("refused as input by the test fitter (config_type 'bad')")
        self.updates += 1
        held = state.configs + [list(cs) for _, _, cs in batches]
        new = refit(model, [c for b in held for c in b])
        entries = [{"version": state.data_version + k + 1, "name": name, "sha256": sha, "configs": len(cs),
                    "added": "-"} for k, (name, sha, cs) in enumerate(batches)]
        return new, {}, ScratchState(state.data + entries, held, new.sha256)


def fitted_model(folder: Path, n_initial: int = 30):
    """A model fitted on the first `n_initial` Si configurations, saved in `folder` with its state;
    returns (path, model, the remaining configurations)."""
    import aceserver

    folder.mkdir(parents=True, exist_ok=True)
    data = si_data()
    base = aceserver.ace1_model(elements=["Si"], order=2, totaldegree=6, rcut=5.0, E0={"Si": -158.54496821})
    model = refit(base, data[:n_initial])
    path = folder / "si.json"
    model.save(str(path))
    state = ScratchState([{"version": 1, "name": "Si_tiny.xyz", "sha256": "-", "configs": n_initial, "added": "-"}],
                         [data[:n_initial]], model.sha256)
    ScratchFitter.save_state(state, ScratchFitter.state_path(path))
    return path, model, data[n_initial:]


def structure_doc(c: Config, config_type: str | None = None) -> dict:
    """A labelled structure of the data route (JSON); its config_type is the configuration's unless given."""
    doc = {"numbers": c.numbers.tolist(), "positions": c.positions.tolist(), "cell": c.cell.tolist(),
           "pbc": c.pbc.tolist(), "energy": c.energy, "forces": c.forces.tolist()}
    if c.virial is not None:
        doc["virial"] = c.virial.tolist()
    doc["config_type"] = config_type or c.config_type
    return doc
