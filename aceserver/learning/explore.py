"""Exploration: MD runs or relaxations with the current model, through the jobs layer
(`jobs.runner.run`, in this process), one per seed structure × strain × temperature × pressure,
each halted as soon as a checked frame has max γ above `gamma_halt` (pacemaker's "stop where the
model extrapolates too far to be trusted"), every frame carrying the per-atom γ.

    runs(cfg, seeds, iteration)            -> [(name, atoms, job spec)]: what one iteration runs
    explore(model, runs, progress)         -> (frames as ase.Atoms, one summary dict per run)

A frame's `atoms.info`: run (name), step, max_gamma, temperature_K (MD); `atoms.arrays["gamma"]`.
Units: Å, fs, K, GPa; strain dimensionless (cell and positions scaled by 1 + strain).
"""
from __future__ import annotations

import numpy as np
from ase import Atoms

from aceserver.errors import ACEInputError
from aceserver.jobs import runner
from aceserver.jobs.frames import to_atoms
from aceserver.jobs.spec import Halt, MDJob, MDParameters, RelaxJob, RelaxParameters

from .config import LearnConfig


def run_seed(base: int, iteration: int, index: int) -> int:
    """The MD seed of run `index` of `iteration`: distinct for every run, the same on a resume."""
    return int(np.random.SeedSequence([base, iteration, index]).generate_state(1, dtype=np.uint64)[0]
               % (2 ** 63 - 1))


def runs(cfg: LearnConfig, seeds: list[Atoms], iteration: int) -> list[tuple[str, Atoms, object]]:
    """The exploration runs of one iteration: (name, starting structure, job spec)."""
    e = cfg.exploration
    halt = Halt(max_gamma=cfg.gamma_halt)
    common = dict(write_every=e.write_every, check_every=e.write_every, halt=halt, record=["gamma"])
    pressures = e.pressures_GPa if (e.kind == "md" and e.ensemble == "npt") or (
        e.kind == "relax" and e.cell_filter) else [0.0]
    temperatures = e.temperatures_K if e.kind == "md" else [0.0]
    out = []
    for s, seed in enumerate(seeds):
        for strain in e.strains:
            atoms = seed.copy()
            atoms.set_cell(atoms.cell.array * (1.0 + strain), scale_atoms=True)
            for T in temperatures:
                for P in pressures:
                    name = f"seed{s}_strain{strain:+g}" + (f"_T{T:g}K" if e.kind == "md" else "") + (
                        f"_P{P:g}GPa" if len(pressures) > 1 or P else "")
                    if e.kind == "md":
                        spec = MDJob(kind="md", parameters=MDParameters(
                            ensemble=e.ensemble, timestep_fs=e.timestep_fs, steps=e.steps, temperature_K=T,
                            pressure_GPa=P, seed=run_seed(cfg.seed, iteration, len(out)),
                            friction_per_fs=e.friction_per_fs), **common)
                    else:
                        spec = RelaxJob(kind="relax", parameters=RelaxParameters(
                            optimizer=e.optimizer, fmax=e.fmax, max_steps=e.steps,
                            cell_filter=e.cell_filter, pressure_GPa=P), **common)
                    out.append((name, atoms, spec))
    return out


class _Collect:
    """A job sink keeping the frames as ase.Atoms with the run's name and γ, no model results (they are
    not labels)."""

    def __init__(self, name: str, progress):
        self.name, self.progress, self.frames = name, progress, []

    def frame(self, frame: dict) -> None:
        a = to_atoms(frame)
        a.calc = None
        for key in ("momenta",):
            if key in a.arrays:
                del a.arrays[key]
        keep = {k: a.info[k] for k in ("step", "max_gamma", "temperature_K") if k in a.info}
        a.info = dict(keep, run=self.name)
        self.frames.append(a)

    def step(self, step: int) -> None:
        if self.progress is not None:
            self.progress(1)


def explore(model, plan, progress=None) -> tuple[list[Atoms], list[dict]]:
    """Run every (name, atoms, spec) of `plan` with `model` (which needs its active set for γ);
    step 0 (the start) counts as a step for `progress`;
    returns the frames of all runs, in order, and per run {run, state, steps, frames, max_gamma,
    reason}. `progress(n)` after each step. A run the evaluator refuses to go on with (atoms on
    top of each other: `ACEInputError`) is state `failed` with the reason; its frames so far are
    kept and the other runs go on."""
    frames, summary = [], []
    for name, atoms, spec in plan:
        sink = _Collect(name, progress)
        try:
            out = runner.run(model, atoms, spec, sink)
            state, step, reason = out.state, out.step, out.reason
        except ACEInputError as err:     # the model drove the atoms where it cannot evaluate
            state, reason = "failed", str(err)
            step = sink.frames[-1].info["step"] if sink.frames else 0
        gammas = [f.info.get("max_gamma", 0.0) for f in sink.frames]
        summary.append({"run": name, "state": state, "steps": step, "frames": len(sink.frames),
                        "max_gamma": float(max(gammas)) if gammas else None, "reason": reason})
        frames += sink.frames
    return frames, summary
