"""The server's options (`Settings`, from `aceserver serve`'s flags) and its lifecycle (`State`:
warming, ready, failed, draining). Both live on `app.state` for the routers' dependencies."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Settings:
    token: str | None = None                 # bearer token for /v1 (None: no authentication)
    max_atoms: int = 100_000                 # atoms per structure (413 above)
    max_structures: int = 1_000              # structures per request (413 above)
    max_body_bytes: int = 64 * 1024 * 1024   # request body size (413 above)
    max_pairs: int = 10_000_000              # neighbour pairs summed over a request (413 above): ~50 bytes
                                             # and 0.2-0.7 µs each, so ≤ ~0.5 GB and a few seconds
    max_descriptor_values: int = 4_000_000   # atoms × descriptor columns summed over a request (413 above):
                                             # 32 MB as float64, ~80 MB as JSON text
    workers: int = 0                         # evaluation threads (0: one per CPU this process may use)
    kernel_threads: int | None = 1           # threads inside one evaluation (1: serial kernel; None: numba's)
    blas_threads: int | None = None          # BLAS threads the command set for the process (`serving.process`;
                                             # None: not set here, BLAS's own)
    gc_freeze: bool = False                  # freeze the heap after warm-up and again after each model swap
                                             # (`serving.process.Heap`; `aceserver serve` turns it on)
    watch_interval: float = 0.0              # poll model files every S seconds and hot-swap changed ones (0: off)
    # connections and shutdown (`server.py`, `lifecycle.py`); seconds
    drain_timeout: float = 30.0              # on SIGTERM, requests not answered by then get a 503 `shutting_down`
    header_timeout: float = 10.0             # request line and headers, from the connection or the previous reply
    body_timeout: float = 60.0               # the request body, from the end of its headers
    keep_alive_timeout: float = 5.0          # an idle connection between requests
    max_connections: int = 100               # open connections; beyond: 503 `too_many_connections` (not probes)
    # jobs (`aceserver.jobs`, routers/jobs.py); no jobs directory: no jobs
    jobs_dir: str | None = None              # SQLite store of jobs and frames
    max_jobs: int = 0                        # jobs running at once (0: half the CPUs, at least 1)
    jobs_ttl_hours: float = 168.0            # finished jobs and their frames are deleted this long after the end
    jobs_max_atom_steps: int = 100_000_000   # atoms × steps of one job (413 above)
    jobs_max_frame_atoms: int = 2_000_000    # atoms × frames of one job, ~88 bytes each (413 above)
    jobs_max_queued: int = 1_000             # jobs waiting at once (503 `too_many_jobs` above)
    scheduler: str | None = None             # run jobs on this dask.distributed scheduler (None: here)
    # learning (`aceserver.learning`, routers/learn.py); models named here take POST /v1/models/{name}/data
    learn: tuple[str, ...] = ()              # names of served models that learn (each needs its fit state beside it)
    learn_dir: str | None = None             # the data log's directory (None: jobs_dir)
    learn_max_pending_atoms: int = 1_000_000  # atoms posted but not yet refitted, per model (503 above)


class State:
    def __init__(self) -> None:
        self.ready = False
        self.failure: str | None = None
        self.draining = False
