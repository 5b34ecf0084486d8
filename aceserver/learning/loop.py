"""The active-learning loop of ``aceserver learn``.

Iteration 0 labels the seed structures and `initial.copies` rattled, strained copies of each,
and fits. Every later iteration k:

    explore   MD/relax runs with model k-1 (`explore`), halted where max γ > gamma_halt
    select    frames with gamma_threshold < max γ <= gamma_max are candidates (all those above the
              threshold where none lies in that window); a D-optimal subset of at most
              min(per_iteration, budget - labels) of them is chosen (`select`)
    label     each chosen frame labelled (`labellers`), appended durably to the data set; a failure
              (non-zero exit, NaN, timeout, ...) is reported with the frame and retried or skipped
    fit       the model updated with the new frames (`fitting.incremental.update`: the cost of the
              new rows, the parameters of a fit of all the data), its active set rebuilt from all
              the data (γ for the next exploration)

until the label budget is spent, no exploration run exceeds the threshold, or max_iterations.
Everything lives in the output directory: `dataset.xyz`, `state.json`, `failures.jsonl`,
`report.json` + `report.png`, and per iteration `iter_NNN/` with `explored.xyz` (every exploration
frame, with γ), `selected.xyz`, `model.json`, its `model.activeset.npz` and `model.fitstate.npz`
(the least-squares state the next update starts from), `fit.log`. The state
is saved after every phase and every labelled frame; rerunning the same command resumes.

Units: eV, Å, eV/Å, eV/Å³; errors in reports meV/atom (energy) and eV/Å (forces).
"""
from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from aceserver.active_sets import active_set_rows
from aceserver.fitting import active_set_build, error_tables, incremental, workflow
from aceserver.fitting.data import Keys, config_from_atoms
from aceserver.io import activeset_file
from aceserver.io.activeset_file import sidecar_path
from aceserver.loading import load_model

from . import explore, labellers, report, select, store
from .config import LearnConfig
from .progress import bar

KEYS = Keys(energy="energy", force="forces", virial="virial", stress="stress")


class LearnError(RuntimeError):
    """The run cannot go on (the message says why); what is on disk is kept."""


def initial_structures(cfg: LearnConfig, seeds) -> list:
    """The seeds, then `copies` of each with a random symmetric strain (entries uniform in ±strain)
    and Gaussian displacements of σ = rattle_A (Å), seeded by `initial.seed`."""
    rng = np.random.default_rng([cfg.initial_seed, 0])
    out = [s.copy() for s in seeds]
    for s in seeds:
        for _ in range(cfg.initial_copies):
            a = s.copy()
            e = rng.uniform(-cfg.initial_strain, cfg.initial_strain, (3, 3))
            a.set_cell(a.cell.array @ (np.eye(3) + 0.5 * (e + e.T)), scale_atoms=True)
            a.positions += rng.normal(0.0, cfg.initial_rattle, a.positions.shape)
            out.append(a)
    for k, a in enumerate(out):
        a.info = {"run": "initial", "step": k}
    return out


class Learner:
    """One run of a configuration; `run()` goes on from whatever its output directory holds."""

    def __init__(self, cfg: LearnConfig, labeller=None, out=None, progress: bool = True, threads=None):
        self.cfg, self.out, self.show, self.threads = cfg, sys.stdout if out is None else out, progress, threads
        self.dir = cfg.output
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "state.json"
        if self.state_path.exists():
            self.state = store.State.load(self.state_path)
            if self.state.config_sha256 != cfg.fingerprint():
                raise LearnError(f"{self.dir.name} holds a run of another configuration (its "
                                 "state.json has another config_sha256): use a new output directory")
        else:
            self.state = store.State(cfg.fingerprint())
        self.dataset = store.Dataset(self.dir / "dataset.xyz")
        self.seeds = [a for p in cfg.seeds for a in store.read_frames(p)]
        if not self.seeds:
            raise LearnError("the seed files hold no structures")
        elements = set(cfg.fit_raw["model"]["elements"])
        for i, a in enumerate(self.seeds):
            extra = sorted(set(a.get_chemical_symbols()) - elements)
            if extra:
                raise LearnError(f"seed structure {i} holds {', '.join(extra)}, not among the model's "
                                 f"elements {sorted(elements)}")
        n0 = len(self.seeds) * (1 + cfg.initial_copies)
        if n0 > cfg.budget:
            raise LearnError(f"iteration 0 would label {n0} frames (the {len(self.seeds)} seeds and "
                             f"{cfg.initial_copies} copies of each), more than the budget of {cfg.budget}")
        self.labeller = labeller if labeller is not None else labellers.make_labeller(
            cfg.labeller, workdir=self.dir, threads=threads)

    # ---- helpers ----------------------------------------------------------------------------
    def _it(self, k: int) -> Path:
        d = self.dir / f"iter_{k:03d}"
        d.mkdir(exist_ok=True)
        return d

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _save(self) -> None:
        self.state.save(self.state_path)

    def _failure(self, record: dict) -> None:
        with open(self.dir / "failures.jsonl", "a") as fh:
            fh.write(json.dumps(record, default=store.plain) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    # ---- phases -----------------------------------------------------------------------------
    def _select(self, k: int) -> dict:
        """Explore with model k-1 and write iter_k/selected.xyz; returns the history entry so far."""
        cfg, it = self.cfg, self._it(k)
        if k == 0:
            picks = initial_structures(cfg, self.seeds)
            store.write_frames(it / "selected.xyz", picks)
            return {"iteration": 0, "selected": len(picks)}
        model = load_model(self.dir / f"iter_{k - 1:03d}" / "model.json")
        plan = explore.runs(cfg, self.seeds, k)
        steps = bar(sum(s.steps + 1 for _, _, s in plan), f"iteration {k}: exploring", enabled=self.show)
        t0 = time.perf_counter()
        frames, runs = explore.explore(model, plan, progress=steps.update)
        steps.close()
        store.write_frames(it / "explored.xyz", frames)
        # the γ window: above the threshold (new), at most gamma_max (beyond it, frames of a run
        # already far outside what the model knows: often unphysical, a label wasted on them); where
        # no frame lies in it (early on, every run leaves it at once) all frames above the threshold
        above = [a for a in frames if a.info.get("max_gamma", 0.0) > cfg.gamma_threshold]
        inside = [a for a in above if a.info["max_gamma"] <= cfg.gamma_max]
        cands = inside or above
        entry = {"iteration": k, "runs": runs, "explored_frames": len(frames), "candidates": len(cands),
                 "in_window": len(inside),
                 "max_gamma_explored": max((r["max_gamma"] or 0.0 for r in runs), default=0.0),
                 "halted_runs": sum(r["state"] == "halted" for r in runs),
                 "failed_runs": sum(r["state"] == "failed" for r in runs),
                 "explore_s": time.perf_counter() - t0}
        for r in runs:
            if r["state"] == "failed":
                self._say(f"iteration {k}: run {r['run']} failed at step {r['steps']}: {r['reason']}")
        self._say(f"iteration {k}: {len(plan)} runs, {len(frames)} frames, {entry['halted_runs']} halted "
                  f"(γ > {cfg.gamma_halt:g}), {entry['failed_runs']} failed; {len(above)} frames with γ > {cfg.gamma_threshold:g}"
                  + (f" ({len(inside)} of them ≤ gamma_max {cfg.gamma_max:g})" if cfg.gamma_max < float("inf") else "")
                  + "; "
                  f"largest γ {entry['max_gamma_explored']:.3g}")
        n = min(cfg.per_iteration, cfg.budget - len(self.dataset))
        picks = []
        if cands and n > 0:
            env = activeset_file.read(sidecar_path(self.dir / f"iter_{k - 1:03d}" / "model.json"))
            chosen = select.select(model, cands, active_set_rows(model, env), n, cfg.gamma_threshold,
                                   tol=cfg.gamma_tol)
            for idx, g in chosen:
                a = cands[idx].copy()
                a.info = dict(cands[idx].info, gamma_pick=g)
                picks.append(a)
        entry["selected"] = len(picks)
        entry["gamma_picked"] = [float(a.info["gamma_pick"]) for a in picks]
        store.write_frames(it / "selected.xyz", picks)
        return entry

    def _label(self, k: int) -> dict:
        cfg = self.cfg
        picks = store.read_frames(self._it(k) / "selected.xyz")
        done = self.dataset.picks(k) | {s["pick"] for s in self.state.skipped if s["iteration"] == k}
        todo = [i for i in range(len(picks)) if i not in done]
        tries = 1 + (cfg.labeller.retries if cfg.labeller.on_failure == "retry" else 0)
        progress = bar(len(todo), f"iteration {k}: labelling", enabled=self.show)
        failures = 0
        for i in todo:
            a = picks[i]
            for attempt in range(1, tries + 1):
                try:
                    label = self.labeller.label(a)
                except labellers.LabelError as err:
                    failures += 1
                    where = (f"iteration {k}, selected frame {i} (run {a.info.get('run')}, step "
                             f"{a.info.get('step')})")
                    last = attempt == tries
                    record = {"iteration": k, "pick": i, "run": a.info.get("run"), "step": a.info.get("step"),
                              "attempt": attempt, "kind": err.kind, "message": str(err),
                              "action": "skipped" if last else "retry"}
                    self._failure(record)
                    self._say(f"labeller failed on {where}, attempt {attempt} of {tries}: {err.kind}: "
                              f"{err}; {'skipped' if last else 'retrying'}")
                    if last:
                        self.state.skipped.append({"iteration": k, "pick": i, "kind": err.kind,
                                                   "message": str(err)})
                        self._save()
                    continue
                self.dataset.append(a, label, k, i)
                break
            progress.update(1)
        progress.close()
        return {"labelled": len(self.dataset.picks(k)), "label_failures": failures,
                "skipped": sum(s["iteration"] == k for s in self.state.skipped)}

    def _fit(self, k: int) -> dict:
        """Iteration 0: a fit of the data set keeping its least-squares state (`fit_with_state`);
        later: `incremental.update` of model k-1 with iteration k's frames (the cost of the new rows;
        the same parameters as a fit of the union). Then the active set of all the data."""
        cfg, it = self.cfg, self._it(k)
        if len(self.dataset) == 0:
            raise LearnError("no frame could be labelled: nothing to fit (see failures.jsonl)")
        elements = list(cfg.fit_raw["model"]["elements"])
        configs = [config_from_atoms(a, KEYS, self.dataset.path.name, i, elements)
                   for i, a in enumerate(self.dataset.frames)]
        new = [c for c, a in zip(configs, self.dataset.frames) if int(a.info["iteration"]) == k]
        log = io.StringIO()
        t0 = time.perf_counter()
        model_path = it / "model.json"
        prev = self.dir / f"iter_{k - 1:03d}" / "model.json"
        if k == 0:
            model, _, state = incremental.fit_with_state(cfg.fit_config(self.dataset.path), output=model_path,
                                                         threads=self.threads, plots=False, out=log)
            how = "fit"
        elif new:
            old = load_model(prev, active_set=False)
            state = incremental.load_state(incremental.state_path(prev), model_sha256=old.sha256)
            model, rep, state = incremental.update(old, state, new, name=f"iter_{k:03d}", threads=self.threads,
                                                   compute_errors=False)
            model.save(str(model_path))
            incremental.save_state(state, incremental.state_path(model_path))
            how = "incremental update"
        else:                                   # every pick failed to label: the model stays
            model = load_model(prev, active_set=False)
            model.save(str(model_path))
            incremental.save_state(incremental.load_state(incremental.state_path(prev), model.sha256),
                                   incremental.state_path(model_path))
            how = "unchanged (nothing labelled)"
        fit_s = time.perf_counter() - t0
        build = active_set_build.build_active_set(model, configs, data_files=[self.dataset.path.name],
                                                  data_sha256=[workflow.sha256_file(self.dataset.path)])
        build.save(sidecar_path(model_path))
        (it / "fit.log").write_text(log.getvalue())
        entry = {"labels": len(self.dataset), "fit": how, "fit_s": fit_s,
                 "total_fit_s": time.perf_counter() - t0, "model_sha256": model.sha256,
                 "train": _mae(error_tables.compute_errors(model, configs, self.threads))}
        if cfg.test:
            entry["test"] = _mae(workflow.evaluate_errors(model, cfg.test, KEYS, threads=self.threads))
        t = entry.get("test", entry["train"])
        self._say(f"iteration {k}: {how} on {len(self.dataset)} labelled frames in {fit_s:.1f} s; "
                  f"{'test' if 'test' in entry else 'training'} MAE E {t['E_meV_atom']:.3g} meV/atom, "
                  f"F {t['F_eV_A']:.3g} eV/Å")
        return entry

    # ---- the loop ---------------------------------------------------------------------------
    def run(self) -> dict:
        cfg, st = self.cfg, self.state
        while st.phase != "done":
            k = st.iteration
            if st.phase == "select":
                if k > 0 and len(self.dataset) >= cfg.budget:
                    self._stop("label budget reached")
                    break
                entry = self._select(k)
                st.history = [h for h in st.history if h["iteration"] != k] + [entry]
                if k > 0 and entry["candidates"] == 0:
                    self._stop(f"no exploration frame has γ above {cfg.gamma_threshold:g}")
                    break
                if entry["selected"] == 0:
                    self._stop("nothing selected")
                    break
                st.phase = "label"
                self._save()
            elif st.phase == "label":
                self._entry(k).update(self._label(k))
                st.phase = "fit"
                self._save()
            elif st.phase == "fit":
                self._entry(k).update(self._fit(k))
                report.write(self.dir, st.history, st.stopped)
                if len(self.dataset) >= cfg.budget:
                    self._stop("label budget reached")
                elif k + 1 >= cfg.max_iterations:
                    self._stop(f"max_iterations ({cfg.max_iterations}) reached")
                else:
                    st.iteration, st.phase = k + 1, "select"
                    self._save()
        report.write(self.dir, st.history, st.stopped)
        return {"stopped": st.stopped, "labels": len(self.dataset), "iterations": len(st.history),
                "model": self._last_model()}

    def _entry(self, k: int) -> dict:
        for h in self.state.history:
            if h["iteration"] == k:
                return h
        h = {"iteration": k}
        self.state.history.append(h)
        return h

    def _stop(self, reason: str) -> None:
        self.state.stopped, self.state.phase = reason, "done"
        self._save()
        self._say(f"stopped: {reason}")

    def _last_model(self) -> str | None:
        for h in reversed(self.state.history):
            if "model_sha256" in h:
                return f"iter_{h['iteration']:03d}/model.json"
        return None


def _mae(table: dict) -> dict:
    """Energy MAE (meV/atom) and force MAE (eV/Å) of the whole set from an error table."""
    m = table["mae"]["set"]
    return {"E_meV_atom": None if m["E"] is None else 1e3 * m["E"], "F_eV_A": m["F"]}
