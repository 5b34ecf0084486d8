"""Labellers: what computes the reference energy, forces and stress of a selected structure.

    ModelLabeller(path)                  a teacher: a `.yace` or aceserver model file (ACECalculator)
    CalculatorLabeller("mod:Class", kw)  any ASE calculator, named by import path, with keyword arguments
    CommandLabeller(command, timeout_s)  a shell command that reads and writes extended XYZ (how DFT
                                         codes are wrapped): ``{input}`` and ``{output}`` in the command
                                         (also $ACESERVER_LABEL_INPUT / $ACESERVER_LABEL_OUTPUT) are the
                                         files; it runs in a fresh directory, in its own process group,
                                         killed with the group when it exceeds timeout_s

`label(atoms)` returns a `Label` (energy eV, forces (N, 3) eV/Å, stress (6,) eV/Å³ Voigt xx yy zz yz
xz xy or None) or raises `LabelError` whose `kind` says what went wrong (`exit`, `timeout`, `nan`,
`output`, `error`); the loop reports it with the frame and skips or retries.
"""
from __future__ import annotations

import importlib
import os
import shlex
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
from ase.calculators.calculator import PropertyNotImplementedError

from aceserver.calculator import ACECalculator
from aceserver.loading import load_model

from .config import Labeller as LabellerSpec

STDERR_TAIL = 400          # characters of a failed command's stderr quoted in the report


class LabelError(RuntimeError):
    """A structure could not be labelled. kind: exit | timeout | nan | output | error."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class Label:
    energy: float                  # eV
    forces: np.ndarray             # (N, 3) eV/Å
    stress: np.ndarray | None      # (6,) eV/Å³, Voigt xx yy zz yz xz xy; None when not computed


def checked(atoms, energy, forces, stress) -> Label:
    """A `Label` after checking shapes and finiteness (`LabelError` kind `nan` or `output`)."""
    n = len(atoms)
    try:
        e = float(np.asarray(energy, dtype=float).reshape(()))
        f = np.array(forces, dtype=float)
        s = None if stress is None else np.array(stress, dtype=float).ravel()
    except (TypeError, ValueError) as exc:
        raise LabelError("output", f"the labels are not numbers of the right shape: {exc}") from None
    if f.shape != (n, 3):
        raise LabelError("output", f"forces have shape {f.shape}, expected ({n}, 3)")
    if s is not None and s.size == 9:
        m = s.reshape(3, 3)
        s = np.array([m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]])
    if s is not None and s.shape != (6,):
        raise LabelError("output", f"stress has {s.size} numbers, expected 6 (Voigt) or 9")
    bad = [name for name, v in (("energy", e), ("forces", f), ("stress", s))
           if v is not None and not np.all(np.isfinite(v))]
    if bad:
        raise LabelError("nan", f"NaN or infinite {', '.join(bad)}")
    return Label(e, f, s)


def _periodic(atoms) -> bool:
    return bool(np.all(atoms.pbc)) and abs(atoms.cell.volume) > 0


def _calculate(calc, atoms) -> Label:
    atoms = atoms.copy()
    atoms.calc = calc
    try:
        energy = atoms.get_potential_energy()
        forces = atoms.get_forces()
        stress = None
        if _periodic(atoms):
            try:
                stress = atoms.get_stress(voigt=True)
            except (PropertyNotImplementedError, NotImplementedError):
                stress = None
    except LabelError:
        raise
    except Exception as exc:      # a calculator may raise anything; the loop reports it
        raise LabelError("error", f"{type(exc).__name__}: {exc}") from None
    return checked(atoms, energy, forces, stress)


class ModelLabeller:
    """A teacher model (`.yace` or aceserver model file) through `ACECalculator`."""

    def __init__(self, path, threads=None):
        self.name = Path(path).name
        self.calc = ACECalculator(load_model(path), committee=False, threads=threads)

    def label(self, atoms) -> Label:
        return _calculate(self.calc, atoms)


class CalculatorLabeller:
    """An ASE calculator named by import path `module:Class`, made once with `kwargs`."""

    def __init__(self, target: str, kwargs: dict | None = None):
        module, _, cls = target.partition(":")
        try:
            factory = getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"labeller calculator {target!r} cannot be imported: {exc}") from None
        try:
            self.calc = factory(**(kwargs or {}))
        except Exception as exc:       # the user's class: say which and why
            raise ValueError(f"labeller calculator {target}(**{kwargs}) failed: "
                             f"{type(exc).__name__}: {exc}") from None
        if not callable(getattr(self.calc, "get_potential_energy", None)):
            raise ValueError(f"labeller calculator {target} made a {type(self.calc).__name__}, not an "
                             "ASE calculator (no get_potential_energy)")
        self.name = target

    def label(self, atoms) -> Label:
        return _calculate(self.calc, atoms)


class CommandLabeller:
    """A shell command reading `{input}` and writing `{output}` (extended XYZ, energy and forces
    with ASE's names or as a calculator's results; stress optional), run in a fresh directory
    under `workdir`, killed with its whole process group after timeout_s seconds."""

    def __init__(self, command: str, timeout_s: float = 3600.0, workdir=None):
        self.command, self.timeout_s, self.workdir = command, float(timeout_s), workdir
        self.name = command.split()[0] if command.split() else command

    def label(self, atoms) -> Label:
        with tempfile.TemporaryDirectory(prefix="label-", dir=self.workdir) as tmp:
            inp, out = Path(tmp) / "input.xyz", Path(tmp) / "output.xyz"
            clean = atoms.copy()
            clean.calc = None
            for key in list(clean.arrays):
                if key not in ("numbers", "positions"):
                    del clean.arrays[key]
            clean.info = {}
            ase.io.write(inp, clean, format="extxyz")
            cmd = self.command.replace("{input}", shlex.quote(str(inp))).replace(
                "{output}", shlex.quote(str(out)))
            env = dict(os.environ, ACESERVER_LABEL_INPUT=str(inp), ACESERVER_LABEL_OUTPUT=str(out))
            proc = subprocess.Popen(["/bin/sh", "-c", cmd], cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    start_new_session=True)
            try:
                _, err = proc.communicate(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise LabelError("timeout", f"the command ran longer than {self.timeout_s:g} s and "
                                            "was killed") from None
            finally:
                _kill_group(proc)       # nothing it started outlives it
            tail = err.decode(errors="replace")[-STDERR_TAIL:].strip()
            if proc.returncode != 0:
                raise LabelError("exit", f"the command exited with status {proc.returncode}"
                                 + (f"; stderr: {tail}" if tail else ""))
            return self._read(atoms, out)

    @staticmethod
    def _read(atoms, out: Path) -> Label:
        if not out.is_file():
            raise LabelError("output", "the command exited 0 but wrote no output file")
        try:
            got = ase.io.read(out, index=0, format="extxyz")
        except Exception as exc:      # ase raises many types for unreadable files
            raise LabelError("output", f"the output is not extended XYZ: {exc}") from None
        if len(got) != len(atoms) or not np.array_equal(got.numbers, atoms.numbers):
            raise LabelError("output", f"the output holds {len(got)} atoms of other elements or "
                             f"order than the {len(atoms)} given")
        results = dict(getattr(got.calc, "results", None) or {})
        energy = results.get("energy", got.info.get("energy"))
        forces = results.get("forces", got.arrays.get("forces"))
        stress = results.get("stress", got.info.get("stress"))
        if energy is None or forces is None:
            raise LabelError("output", "the output has no energy or no forces")
        return checked(atoms, energy, forces, stress)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def make_labeller(spec: LabellerSpec, workdir=None, threads=None):
    """The labeller a configuration's `labeller` section names."""
    if spec.kind == "model":
        return ModelLabeller(spec.target, threads=threads)
    if spec.kind == "calculator":
        return CalculatorLabeller(spec.target, spec.kwargs)
    return CommandLabeller(spec.target, spec.timeout_s, workdir)
