"""Many relaxations in one job (`RelaxManyJob`): each structure has its own ASE optimiser (FIRE,
BFGS or LBFGS, on a `FrechetCellFilter` with `cell_filter`), and each step of all the structures
still running is ONE `evaluate_many` call (one packed kernel pass, not one evaluation each).
Units: eV, Å, eV/Å, stress eV/Å³ (ASE Voigt xx yy zz yz xz xy).

The structures move in lockstep, each in the order ASE's `Optimizer.irun` uses for one structure:
forces at the given structure and a convergence check (step 0); then, per step, the optimiser's
`step()` (which reads the forces at the current positions), `nsteps += 1`, forces at the new
positions and a convergence check. Forces come from `Served`, a calculator that answers only for
the exact numbers, positions, cell and pbc the batch evaluated and raises `NotEvaluatedHere`
otherwise, so an optimiser that asked anywhere else would fail the job instead of getting a stale
number. `evaluate_many` gives `evaluate`'s numbers bit for bit, so every structure follows the
trajectory of `runner.run` on it alone with skin=0 (a fresh neighbour search per step) bit for bit.

Per structure: frames every `write_every` steps (its first and last always), halt conditions every
`check_every` steps (a structure that trips one ends `halted`; the others go on), a frame carries
`structure` (its index in the request). A structure the evaluator refuses (atoms too close, more
pairs than the step's budget) ends `failed` with its error document; the others go on. Cancel (and
server shutdown) is looked at between steps: every running structure ends `cancelled` with a frame.

A sink with an `outcome(summary)` method (the job manager's) is told every structure's outcome so
far (`_Item.summary`, state None while it runs) at the start, right before each of its frames and
when it fails, so that the store keeps it in the transaction of its last frame and a server killed
mid-batch still knows how every structure ended or how far it got.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Sequence

from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError

from aceserver.calculator import calculator_results
from aceserver.errors import BatchError
from aceserver.evaluation.site_potential import SitePotential

from . import frames
from .runner import (Sink, error_document, halt_message, halt_reason, needs_committee, needs_gamma,
                     optimizer)
from .spec import RelaxManyJob

ENDED = ("converged", "not_converged", "halted", "failed", "cancelled")     # a structure's final states


class NotEvaluatedHere(RuntimeError):
    """An optimiser asked for results at a structure the batch did not evaluate."""


class Served(Calculator):
    """ASE calculator holding the batch's results for one structure: it answers for exactly the
    numbers, positions, cell and pbc they were computed at (results as `ACECalculator`'s, arrays
    returned as copies), and raises `NotEvaluatedHere` for anything else."""

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self):
        super().__init__()
        self.at = None

    def serve(self, atoms: Atoms, results: dict) -> None:
        # the structure's bytes (float64 positions and cell, int64 numbers, bool pbc: ASE keeps these
        # dtypes, so equal bytes are equal arrays); asked for twice per step, compared positions first
        self.at = _key(atoms)
        self.results = results

    def _here(self, atoms: Atoms) -> bool:
        return self.at == _key(atoms)

    def get_property(self, name, atoms=None, allow_calculation=True):
        if atoms is not None and not self._here(atoms):
            raise NotEvaluatedHere(f"{name} asked for at a structure the batch did not evaluate")
        if name not in self.results:
            raise PropertyNotImplementedError(f"{name} is not among the batch's results (stress needs a cell "
                                              "periodic in all three directions)")
        value = self.results[name]
        return value.copy() if hasattr(value, "copy") else value


def _key(atoms: Atoms) -> tuple:
    a = atoms.arrays
    return (a["positions"].tobytes(), atoms.cell.array.tobytes(), a["numbers"].tobytes(), atoms.pbc.tobytes(),
            a["positions"].dtype, a["numbers"].dtype)


@dataclass
class _Item:
    """One structure of the batch: its atoms, calculator and optimiser, and how it ended."""
    index: int
    atoms: Atoms
    calc: Served
    opt: object
    state: str | None = None            # one of ENDED once it has ended
    steps: int = 0
    reason: str | None = None
    halt: dict | None = None
    error: dict | None = None
    frame: dict | None = None           # the last frame written

    def summary(self) -> dict:
        f = self.frame if self.frame is not None and self.frame["step"] == self.steps else None
        return {"index": self.index, "state": self.state, "steps": self.steps, "reason": self.reason,
                "halt": self.halt, "error": self.error, "frame": None if f is None else f["index"],
                "energy": None if f is None else f["energy"], "max_force": None if f is None else f["max_force"]}


@dataclass
class BatchOutcome:
    state: str                          # done or cancelled
    step: int                           # the last step done by any structure
    reason: str | None = None
    halt: dict | None = None            # always None: halts are per structure
    converged: bool | None = None       # every structure converged
    frames: int = 0
    structures: list[dict] = field(default_factory=list)   # per structure, in request order (`_Item.summary`)


def _item(k: int, atoms: Atoms, spec: RelaxManyJob) -> _Item:
    atoms = atoms.copy()
    atoms.calc = calc = Served()
    opt = optimizer(atoms, spec.parameters)
    opt.fmax = spec.parameters.fmax     # what irun(fmax=...) sets
    return _Item(k, atoms, calc, opt)


def run(model: SitePotential, structures: Sequence[Atoms], spec: RelaxManyJob, sink: Sink,
        cancel: threading.Event | None = None, failed: dict[int, dict] | None = None,
        threads: int | None = None, max_pairs: int | None = None) -> BatchOutcome:
    """Relax copies of `structures` with `model`; frames go to `sink`. failed: structures refused
    before the run (index -> error document), reported as failed at step 0. threads, max_pairs:
    `evaluate_many`'s (max_pairs: the pairs of one step summed over the batch)."""
    failed = failed or {}
    items = [_item(k, a, spec) for k, a in enumerate(structures) if k not in failed]
    ended = {k: _Item(k, None, None, None, "failed", 0, error=doc) for k, doc in failed.items()}
    p, checks = spec.parameters, spec.halt.active()
    committee, record_gamma, gamma = needs_committee(spec), "gamma" in spec.record, needs_gamma(spec)
    live, step, written, cancelled = items, 0, 0, False
    report = getattr(sink, "outcome", None) or (lambda summary: None)
    for it in sorted([*ended.values(), *items], key=lambda it: it.index):      # every structure, from the start
        report(it.summary())
    while live:
        # γ on the steps that check it, or on every step when frames record it (as runner.run)
        with_gamma = gamma and (record_gamma or step % spec.check_every == 0)
        try:
            evaluations, errors = model.evaluate_many([it.atoms for it in live], committee=committee,
                                                      gamma=with_gamma, threads=threads, max_pairs=max_pairs), {}
        except BatchError as ex:
            evaluations, errors = ex.results, ex.errors
        cancelled = cancel is not None and cancel.is_set()
        for j, it in enumerate(live):
            it.steps = step
            if j in errors:
                it.state, it.error = "failed", error_document(errors[j], f"structures[{it.index}]")
                report(it.summary())
                continue
            it.calc.serve(it.atoms, calculator_results(evaluations[j], it.atoms.cell.array, it.atoms.pbc))
            converged = bool(it.opt.converged())
            final = converged or step >= p.max_steps
            write = step % spec.write_every == 0 or final
            check = bool(checks) and step % spec.check_every == 0
            frame = None
            if write or check or cancelled:
                frame = frames.make(it.atoms, it.calc.results, written, step, None, False,
                                    it.calc.results.get("gamma"))
                frame["structure"] = it.index
            halt = halt_reason(spec.halt, frame) if check else None
            if halt is not None:
                it.state, it.halt, it.reason = "halted", halt, halt_message(halt)
            elif cancelled:
                it.state = "cancelled"
            elif final:
                it.state = "converged" if converged else "not_converged"
            if write or halt is not None or cancelled:
                it.frame, written = frame, written + 1
                report(it.summary())        # before its frame: the sink keeps both in one commit
                sink.frame(frame)
        sink.step(step)
        live = [it for it in live if it.state is None]
        for it in live:                 # irun's next step: step() on the forces just served, then count it
            it.opt.step()
            it.opt.nsteps += 1
        step += 1
    for it in items:
        ended[it.index] = it
    summaries = [ended[k].summary() for k in sorted(ended)]
    last = max((s["steps"] for s in summaries), default=0)
    return BatchOutcome("cancelled" if cancelled else "done", last, None, None,
                        all(s["state"] == "converged" for s in summaries), written, summaries)
