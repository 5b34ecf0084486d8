"""What a learning run keeps on disk, written so that an interruption at any moment loses nothing
labelled and the run resumes where it stopped.

    Dataset(path)   the labelled frames, one extended-XYZ file: energy (eV), forces (eV/Å), stress
                    (eV/Å³, Voigt, periodic cells) under ASE's names, and in each frame's info
                    `iteration`, `pick` (its index in that iteration's selection), `run`, `step`,
                    `gamma_pick`. Each frame is appended, flushed and fsynced before the next
                    label starts; a frame cut short by a crash is dropped (truncated) on reopening.
    State           the loop's position (iteration, phase), the per-iteration history, the frames
                    skipped after labeller failures, the configuration's sha256; `save` writes a
                    temporary file, fsyncs it and renames it over the old one (atomic).
    write_frames / read_frames   extended XYZ of unlabelled frames (selections, exploration).
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

from aceserver.io.durable import fsync_dir, replace_durably

FORMAT, VERSION = "aceserver-learn-state", 1


def _extxyz(frames) -> bytes:
    buf = io.StringIO()
    for a in frames:
        ase.io.write(buf, a, format="extxyz")
    return buf.getvalue().encode()


def complete_prefix(data: bytes) -> int:
    """The length of the longest prefix of extended-XYZ `data` made of whole frames (a count line,
    a comment line and that many atom lines, each ending in a newline)."""
    pos, end = 0, len(data)
    while pos < end:
        nl = data.find(b"\n", pos)
        if nl < 0:
            return pos
        try:
            n = int(data[pos:nl].strip())
        except ValueError:
            return pos
        cursor = nl + 1
        for _ in range(n + 1):
            nl = data.find(b"\n", cursor)
            if nl < 0:
                return pos
            cursor = nl + 1
        pos = cursor
    return pos


def write_frames(path, frames) -> None:
    """Frames (ase.Atoms) to an extended-XYZ file, written whole then renamed into place."""
    data = _extxyz(frames)
    replace_durably(lambda tmp: tmp.write_bytes(data), path)


def read_frames(path) -> list:
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return []
    return ase.io.read(path, index=":", format="extxyz")


class Dataset:
    """The run's labelled frames (see the module docstring)."""

    def __init__(self, path):
        self.path = Path(path)
        if self.path.exists():
            data = self.path.read_bytes()
            good = complete_prefix(data)
            if good < len(data):          # a frame cut short by an interruption: not labelled
                with open(self.path, "r+b") as fh:
                    fh.truncate(good)
                    fh.flush()
                    os.fsync(fh.fileno())
        self.frames = read_frames(self.path)

    def __len__(self) -> int:
        return len(self.frames)

    def picks(self, iteration: int) -> set[int]:
        return {int(a.info["pick"]) for a in self.frames if int(a.info["iteration"]) == iteration}

    def append(self, atoms, label, iteration: int, pick: int) -> None:
        """Append `atoms` with `label` (energy, forces, stress) and durably (fsync) before returning."""
        a = atoms.copy()
        a.info = {k: v for k, v in atoms.info.items() if k in ("run", "step", "gamma_pick")}
        a.info.update(iteration=int(iteration), pick=int(pick))
        for key in list(a.arrays):
            if key not in ("numbers", "positions"):
                del a.arrays[key]
        results = {"energy": label.energy, "forces": label.forces}
        if label.stress is not None:
            results["stress"] = label.stress
        a.calc = SinglePointCalculator(a, **results)
        blob = _extxyz([a])
        with open(self.path, "ab") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        if len(self.frames) == 0:
            fsync_dir(self.path.parent)
        self.frames.append(ase.io.read(io.StringIO(blob.decode()), format="extxyz"))


@dataclass
class State:
    config_sha256: str
    iteration: int = 0
    phase: str = "select"                 # select | label | fit | done
    history: list = field(default_factory=list)
    skipped: list = field(default_factory=list)    # [{"iteration", "pick", "kind", "message"}]
    stopped: str | None = None

    def save(self, path) -> None:
        text = json.dumps(dict(format=FORMAT, version=VERSION, **asdict(self)), indent=1, default=plain)
        replace_durably(lambda tmp: tmp.write_text(text), path)

    @classmethod
    def load(cls, path) -> State:
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{Path(path).name} is not a readable learning state: {exc}") from None
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise ValueError(f"{Path(path).name} is not a version-{VERSION} {FORMAT} file")
        return cls(**{k: doc[k] for k in ("config_sha256", "iteration", "phase", "history", "skipped",
                                          "stopped")})


def plain(obj):
    """numpy scalars and arrays as JSON numbers and lists."""
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
