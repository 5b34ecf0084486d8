"""The durable job store: one SQLite database (`jobs.sqlite` in the jobs directory, WAL journal).

Tables: `jobs` (one row per job: kind, model, state, reason, halt, error document, spec, progress,
timings as Unix seconds, a relax_many job's outcome per structure as JSON), `frames` (job, index,
step, the frame as msgpack bytes, `frames.py`) and `outcomes` (a running relax_many job's outcome
so far per structure, JSON: state null while it runs, with its last frame; folded into
`jobs.structures` when the job gets its final state).
A frame is committed before the job's frame count says it exists (and before any stream sends it),
and a structure's outcome in the transaction of its last frame, so every frame and outcome a reader
has seen survives the process being killed (SIGKILL); WAL with synchronous=NORMAL loses nothing on a
process crash (only an OS crash or power loss can lose the last transactions).

States: queued, running, then one of done, halted, failed, cancelled, interrupted (the server
stopped or died while the job was queued or running; `mark_interrupted` on start-up: a relax_many
job's finished structures keep their outcomes, the ones still running become `interrupted`).
Expiry: `expire(ttl_s)` deletes finished jobs (and their frames) that finished more than ttl_s ago.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

FINISHED = ("done", "halted", "failed", "cancelled", "interrupted")
STATES = ("queued", "running") + FINISHED
PAGE = 256                       # frames read per query (the lock is held for one page)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, model TEXT NOT NULL, model_sha256 TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT, halt TEXT, error TEXT, converged INTEGER,
    spec TEXT NOT NULL, n_atoms INTEGER NOT NULL, steps INTEGER NOT NULL,
    step INTEGER NOT NULL DEFAULT 0, frames INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL, started REAL, finished REAL, structures TEXT);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished);
CREATE TABLE IF NOT EXISTS frames (
    job TEXT NOT NULL, idx INTEGER NOT NULL, step INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (job, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outcomes (
    job TEXT NOT NULL, idx INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY (job, idx)) WITHOUT ROWID;
"""
COLUMNS = ("id", "kind", "model", "model_sha256", "state", "reason", "halt", "error", "converged", "spec",
           "n_atoms", "steps", "step", "frames", "created", "started", "finished", "structures")
JSON_COLUMNS = ("halt", "error", "spec", "structures")
STOPPED = "the server stopped while the job was running"


class JobStore:
    """Thread-safe access to the database (one connection, one lock: SQLite writes one at a time anyway)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.directory / "jobs.sqlite", check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            if "structures" not in {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}:
                self._db.execute("ALTER TABLE jobs ADD COLUMN structures TEXT")   # a database made before relax_many
        except sqlite3.Error as ex:       # not writable, not a database, ...
            raise OSError(f"cannot use {self.directory / 'jobs.sqlite'} as the jobs database: {ex}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row(self, row: tuple | None) -> dict[str, Any] | None:
        if row is None:
            return None
        job = dict(zip(COLUMNS, row))
        for key in JSON_COLUMNS:
            job[key] = json.loads(job[key]) if job[key] is not None else None
        job["converged"] = None if job["converged"] is None else bool(job["converged"])
        return job

    # -- jobs ---------------------------------------------------------------------------------
    def create(self, job_id: str, kind: str, model: str, sha256: str, spec: dict, n_atoms: int, steps: int) -> None:
        with self._lock:
            self._db.execute("INSERT INTO jobs (id, kind, model, model_sha256, state, spec, n_atoms, steps, created) "
                             "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?)",
                             (job_id, kind, model, sha256, json.dumps(spec), n_atoms, steps, time.time()))

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._row(row)

    def list(self, state: str | None = None, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        where, args = ("WHERE state = ?", [state]) if state else ("", [])
        with self._lock:
            rows = self._db.execute(f"SELECT {', '.join(COLUMNS)} FROM jobs {where} ORDER BY created DESC, id "
                                    "LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
        return [self._row(r) for r in rows]

    def count(self, states: tuple[str, ...]) -> int:
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE state IN ({', '.join('?' * len(states))})",
                                    states).fetchone()[0]

    def start(self, job_id: str) -> bool:
        """queued -> running; False if the job is no longer queued (cancelled meanwhile)."""
        with self._lock:
            cur = self._db.execute("UPDATE jobs SET state = 'running', started = ? WHERE id = ? AND state = 'queued'",
                                   (time.time(), job_id))
        return cur.rowcount == 1

    def finish(self, job_id: str, state: str, step: int | None = None, reason: str | None = None,
               halt: dict | None = None, error: dict | None = None, converged: bool | None = None,
               structures: list | None = None) -> bool:
        """Give a queued or running job its final state; False if it already had one. structures:
        a relax_many job's outcome per structure; without it, the stored `outcomes` are kept, those
        of structures still running given the job's state (failed with its error, cancelled, or
        interrupted)."""
        assert state in FINISHED
        with self._lock:
            self._db.execute("BEGIN")
            if structures is None:
                structures = self._fold(job_id, state if state in ("failed", "cancelled") else "interrupted",
                                        reason, error)
            cur = self._db.execute(
                "UPDATE jobs SET state = ?, step = COALESCE(?, step), reason = ?, halt = ?, error = ?, converged = ?, "
                "finished = ?, structures = COALESCE(?, structures) WHERE id = ? AND state IN ('queued', 'running')",
                (state, step, reason, None if halt is None else json.dumps(halt),
                 None if error is None else json.dumps(error), None if converged is None else int(converged),
                 time.time(), None if structures is None else json.dumps(structures), job_id))
            self._db.execute("DELETE FROM outcomes WHERE job = ?", (job_id,))
            self._db.execute("COMMIT")
        return cur.rowcount == 1

    def _fold(self, job_id: str, state: str, reason: str | None, error: dict | None) -> list | None:
        """The job's stored outcomes in index order, those still running (state null) ended as
        `state` with `reason` and `error` (None: none stored). Call inside a transaction."""
        rows = self._db.execute("SELECT data FROM outcomes WHERE job = ? ORDER BY idx", (job_id,)).fetchall()
        out = [json.loads(r[0]) for r in rows]
        for s in out:
            if s["state"] is None:
                s["state"], s["reason"], s["error"] = state, reason, error
        return out or None

    def mark_interrupted(self) -> int:
        """On start-up: jobs left queued or running by a server that stopped are `interrupted` (a
        relax_many job's structures that had not ended too, with their last stored frame)."""
        with self._lock:
            self._db.execute("BEGIN")
            for (job_id,) in self._db.execute("SELECT DISTINCT job FROM outcomes WHERE job IN "
                                              "(SELECT id FROM jobs WHERE state = 'running')").fetchall():
                folded = self._fold(job_id, "interrupted", STOPPED, None)
                self._db.execute("UPDATE jobs SET structures = ? WHERE id = ?", (json.dumps(folded), job_id))
            self._db.execute("DELETE FROM outcomes WHERE job IN (SELECT id FROM jobs WHERE state IN "
                             "('queued', 'running'))")
            cur = self._db.execute("UPDATE jobs SET state = 'interrupted', finished = ?, reason = "
                                   "'the server stopped while the job was ' || state WHERE state IN "
                                   "('queued', 'running')", (time.time(),))
            self._db.execute("COMMIT")
        return cur.rowcount

    def expire(self, ttl_s: float) -> int:
        """Delete finished jobs (and their frames) that finished more than ttl_s seconds ago."""
        cutoff = time.time() - ttl_s
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM frames WHERE job IN (SELECT id FROM jobs WHERE finished < ?)", (cutoff,))
            cur = self._db.execute("DELETE FROM jobs WHERE finished < ?", (cutoff,))
            self._db.execute("COMMIT")
        return cur.rowcount

    # -- frames -------------------------------------------------------------------------------
    def add_frame(self, job_id: str, index: int, step: int, blob: bytes) -> None:
        """Keep a frame and count it, in one transaction (committed on return)."""
        self.add_frames(job_id, [(index, step, blob)])

    def add_frames(self, job_id: str, rows: list[tuple[int, int, bytes]], outcomes: list[dict] = ()) -> None:
        """Keep frames (index, step, bytes; consecutive indices) and count them, and a relax_many
        job's outcomes so far (`index` each, replacing that structure's), in one transaction."""
        if not rows and not outcomes:
            return
        with self._lock:
            self._db.execute("BEGIN")
            if rows:
                self._db.executemany("INSERT INTO frames (job, idx, step, data) VALUES (?, ?, ?, ?)",
                                     [(job_id, i, st, b) for i, st, b in rows])
                self._db.execute("UPDATE jobs SET frames = ?, step = ? WHERE id = ?",
                                 (rows[-1][0] + 1, rows[-1][1], job_id))
            if outcomes:
                self._db.executemany("INSERT OR REPLACE INTO outcomes (job, idx, data) VALUES (?, ?, ?)",
                                     [(job_id, s["index"], json.dumps(s)) for s in outcomes])
            self._db.execute("COMMIT")

    def frames(self, job_id: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """The stored frames index start, start+1, ... (below stop), as msgpack bytes, a page at a time."""
        while stop is None or start < stop:
            n = PAGE if stop is None else min(PAGE, stop - start)
            with self._lock:
                rows = self._db.execute("SELECT data FROM frames WHERE job = ? AND idx >= ? ORDER BY idx LIMIT ?",
                                        (job_id, start, n)).fetchall()
            yield from (r[0] for r in rows)
            if len(rows) < n:
                return
            start += len(rows)
