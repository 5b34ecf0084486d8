"""The durable data log of the learning service: labelled configurations posted to a model, in
numbered batches (data versions), in one SQLite database (`learning.sqlite` in the server's
learning directory).

Why SQLite and not an extended-XYZ file: a batch is appended in one transaction, so a batch is in
the log whole or not at all (a crash half-way through an append to a text file leaves a torn
frame that the next read trips over); the version number is assigned in the same transaction;
reading the batches after a version is one indexed query. The journal is WAL with
`synchronous=FULL`: the commit returns only after the WAL is fsynced, so a batch the server
acknowledged survives a process kill and an OS crash. `to_atoms` turns a logged configuration
into `ase.Atoms` with its labels, for writing the log out as extended XYZ.

Tables: `batches` (model, version, name, sha256, configs, atoms, added: ISO-8601 UTC, refused:
why the fitter refused the batch, or NULL) and
`configs` (model, version, index in the batch, config_type, the arrays as raw little-endian bytes:
numbers int64, positions (N, 3) Å, cell (3, 3) Å, pbc 3 flags, energy eV, forces (N, 3) eV/Å,
virial (3, 3) eV (W = -V·σ) or NULL), `lineage` (per model, a digest of the training files of
the fit the posts extend). No pickle. Each batch's sha256 covers those bytes in order
and is checked when the batch is read back.
"""
from __future__ import annotations

import datetime
import hashlib
import sqlite3
import struct
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
from ase import Atoms

from aceserver.fitting.data import Config

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    model TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL,
    configs INTEGER NOT NULL, atoms INTEGER NOT NULL, added TEXT NOT NULL, refused TEXT,
    PRIMARY KEY (model, version)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS configs (
    model TEXT NOT NULL, version INTEGER NOT NULL, idx INTEGER NOT NULL, config_type TEXT NOT NULL,
    numbers BLOB NOT NULL, positions BLOB NOT NULL, cell BLOB NOT NULL, pbc INTEGER NOT NULL,
    energy REAL NOT NULL, forces BLOB NOT NULL, virial BLOB,
    PRIMARY KEY (model, version, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lineage (model TEXT PRIMARY KEY, base TEXT NOT NULL) WITHOUT ROWID;
"""
FILE = "learning.sqlite"
BATCH_KEYS = ("version", "name", "sha256", "configs", "atoms", "added", "refused")
PAGE = 64                   # configurations read per query by `DataLog.configs`
# the next page after (version, idx), keyset-paginated: the primary key's order, no OFFSET rescans
PAGE_QUERY = """
SELECT c.version, c.idx, b.name, b.sha256, b.configs, b.atoms, b.added, b.refused,
       c.config_type, c.numbers, c.positions, c.cell, c.pbc, c.energy, c.forces, c.virial
FROM configs c JOIN batches b ON b.model = c.model AND b.version = c.version
WHERE c.model = ? AND (c.version, c.idx) > (?, ?) AND c.version <= ?
ORDER BY c.version, c.idx LIMIT ?"""


class DataLogError(ValueError):
    """The log cannot be used (not writable, not a database) or a batch fails its sha256 check."""


def _row(c: Config) -> tuple:
    """The stored fields of one configuration (arrays as little-endian bytes)."""
    virial = None if c.virial is None else np.ascontiguousarray(c.virial, "<f8").tobytes()
    pbc = int(sum(1 << k for k in range(3) if c.pbc[k]))
    return (c.config_type, np.ascontiguousarray(c.numbers, "<i8").tobytes(),
            np.ascontiguousarray(c.positions, "<f8").tobytes(), np.ascontiguousarray(c.cell, "<f8").tobytes(),
            pbc, float(c.energy), np.ascontiguousarray(c.forces, "<f8").tobytes(), virial)


def _hash_row(h, row: tuple) -> None:
    """Feed one stored row to a batch's sha256 (the batch's digest is its rows fed in order)."""
    config_type, numbers, positions, cell, pbc, energy, forces, virial = row
    ct = config_type.encode()
    h.update(struct.pack("<q", len(ct)) + ct + struct.pack("<q", len(numbers)) + numbers + positions + cell)
    h.update(struct.pack("<qd", pbc, energy) + forces + (b"\x01" + virial if virial is not None else b"\x00"))


def _digest(rows: list[tuple]) -> str:
    h = hashlib.sha256()
    for row in rows:
        _hash_row(h, row)
    return h.hexdigest()


def _config(row: tuple, source: str, frame: int) -> Config:
    config_type, numbers, positions, cell, pbc, energy, forces, virial = row
    z = np.frombuffer(numbers, "<i8").astype(np.int64)
    return Config(numbers=z, positions=np.frombuffer(positions, "<f8").reshape(-1, 3).copy(),
                  cell=np.frombuffer(cell, "<f8").reshape(3, 3).copy(),
                  pbc=np.array([bool(pbc >> k & 1) for k in range(3)]), energy=float(energy),
                  forces=np.frombuffer(forces, "<f8").reshape(-1, 3).copy(),
                  virial=None if virial is None else np.frombuffer(virial, "<f8").reshape(3, 3).copy(),
                  config_type=config_type, source=source, frame=frame)


class DataLog:
    """Thread-safe access to the log (one connection, one lock)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.directory / FILE, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")      # fsync at every commit: acknowledged = on disk
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as ex:
            raise DataLogError(f"cannot use {self.directory / FILE} as the learning data log: {ex}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, model: str, configs: list[Config], after: int = 0) -> dict:
        """Append one batch (every config needs energy and forces) as the next version of `model`'s
        data: one more than the largest of the log's versions and `after` (the version the model's
        state already holds); returns the batch's entry. Durable when this returns."""
        if not configs:
            raise ValueError("a batch holds at least one configuration")
        rows = [_row(c) for c in configs]
        digest = _digest(rows)
        added = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        atoms = sum(len(c.numbers) for c in configs)
        with self._lock:
            try:
                return self._append(model, rows, digest, added, atoms, after)
            except sqlite3.Error as ex:        # disk full, read-only, locked by another process, ...
                raise DataLogError(f"cannot append to the learning data log: {ex}") from None

    def _append(self, model: str, rows: list[tuple], digest: str, added: str, atoms: int, after: int) -> dict:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            (last,) = db.execute("SELECT max(version) FROM batches WHERE model = ?", (model,)).fetchone()
            version = max(last or 0, after) + 1
            name = batch_name(version)
            db.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                       (model, version, name, digest, len(rows), atoms, added))
            db.executemany("INSERT INTO configs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(model, version, i, *r) for i, r in enumerate(rows)])
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return {"version": version, "name": name, "sha256": digest, "configs": len(rows), "atoms": atoms,
                "added": added}

    def batches(self, model: str, after: int = 0) -> list[dict]:
        """The entries of `model`'s batches with a version above `after`, in order; `refused` holds why
        the fitter refused a batch (`mark_refused`), else None."""
        with self._lock:
            rows = self._db.execute("SELECT version, name, sha256, configs, atoms, added, refused FROM batches "
                                    "WHERE model = ? AND version > ? ORDER BY version", (model, after)).fetchall()
        return [dict(zip(BATCH_KEYS, r)) for r in rows]

    def refused(self, model: str, last: int) -> list[dict]:
        """The `last` latest batches of `model` the fitter refused: [{version, reason}], oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT version, refused FROM batches WHERE model = ? AND refused IS NOT NULL "
                                    "ORDER BY version DESC LIMIT ?", (model, last)).fetchall()
        return [{"version": v, "reason": r} for v, r in reversed(rows)]

    def lineage(self, model: str, base: str) -> str:
        """The base fit `model`'s batches were posted to (a digest of its training files): recorded the
        first time, returned as recorded afterwards (a caller compares it with its own)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO lineage VALUES (?, ?)", (model, base))
            (recorded,) = self._db.execute("SELECT base FROM lineage WHERE model = ?", (model,)).fetchone()
        return recorded

    def mark_refused(self, model: str, version: int, reason: str) -> None:
        """Record (durably) that the fitter refused a batch: it stays in the log, and is not pending."""
        with self._lock:
            self._db.execute("UPDATE batches SET refused = ? WHERE model = ? AND version = ?",
                             (reason, model, version))

    def last_version(self, model: str) -> int:
        with self._lock:
            (last,) = self._db.execute("SELECT max(version) FROM batches WHERE model = ?", (model,)).fetchone()
        return last or 0

    def read(self, model: str, version: int) -> list[Config]:
        """The configurations of one batch, checked against its sha256."""
        with self._lock:
            batch = self._db.execute("SELECT sha256 FROM batches WHERE model = ? AND version = ?",
                                     (model, version)).fetchone()
            rows = self._db.execute("SELECT config_type, numbers, positions, cell, pbc, energy, forces, virial "
                                    "FROM configs WHERE model = ? AND version = ? ORDER BY idx",
                                    (model, version)).fetchall()
        if batch is None:
            raise DataLogError(f"model {model!r} has no data version {version} in the log")
        if _digest(rows) != batch[0]:
            raise DataLogError(f"data version {version} of model {model!r} fails its sha256 check (the log was "
                               "modified or corrupted)")
        return [_config(r, batch_name(version), i) for i, r in enumerate(rows)]


    def configs(self, model: str, after: int = 0, until: int | None = None,
                page: int = PAGE) -> Iterator[tuple[dict, Config]]:
        """Every configuration of `model`'s batches with a version above `after` (and at most `until`),
        in version and batch order, as (the batch's entry, the config), read `page` rows per query: at
        most a page of rows in memory, and the lock is not held between pages (posts go on). Each
        batch's sha256 is checked as its last row is read; a mismatch raises DataLogError there (after
        the batch's earlier rows were yielded: a streamed reply is cut, never completed wrongly)."""
        until = (1 << 62) if until is None else until
        version, idx, h, batch = after, 1 << 62, None, None    # (version, idx) > (after, any idx)

        def broken() -> DataLogError:
            return DataLogError(f"data version {version} of model {model!r} fails its sha256 check (the log was "
                                "modified or corrupted)")
        while True:
            with self._lock:
                rows = self._db.execute(PAGE_QUERY, (model, version, idx, until, page)).fetchall()
            for r in rows:
                if r[0] != version:
                    if batch is not None and idx != batch["configs"] - 1:
                        raise broken()             # rows missing at the end of the previous batch
                    h, batch = hashlib.sha256(), dict(zip(BATCH_KEYS, (r[0], *r[2:8])))
                version, idx = r[0], r[1]
                _hash_row(h, r[8:])
                if idx == batch["configs"] - 1 and h.hexdigest() != batch["sha256"]:
                    raise broken()
                yield batch, _config(r[8:], batch["name"], idx)
            if not rows:
                if batch is not None and idx != batch["configs"] - 1:
                    raise broken()
                return


POSTED = "posted-v"


def batch_name(version: int) -> str:
    """The name a posted batch has in the model's fit state (`FitState.data[k]["name"]`)."""
    return f"{POSTED}{version}"


def to_atoms(c: Config):
    """An `ase.Atoms` of one logged configuration, its labels as extended-XYZ keys: info `energy`
    (eV), `virial` (eV, 3×3), `config_type`; array `forces` (eV/Å)."""
    atoms = Atoms(numbers=c.numbers, positions=c.positions, cell=c.cell, pbc=c.pbc)
    atoms.info["energy"] = c.energy
    atoms.info["config_type"] = c.config_type
    if c.virial is not None:
        atoms.info["virial"] = c.virial
    atoms.arrays["forces"] = np.asarray(c.forces)
    return atoms
