"""Relaxations and molecular dynamics run as jobs on a server's models: queued, run on their own
threads, kept durably, streamed back as frames, halted on conditions. Knows nothing of HTTP.

    spec      what a job asks for (pydantic: relax, md or relax_many parameters, write_every, halt conditions)
    runner    one job: ASE optimiser or integrator on an ACECalculator, frames, halt checks, cancel
    batch_relax  relax_many: an optimiser per structure, each step of all of them one evaluate_many call
    frames    a frame (the structure at a step and its results) and its encodings (msgpack, extxyz, traj)
    limits    checks before a job is queued: model, cell, work (atoms × steps), disk (atoms × frames)
    store     the SQLite store of jobs, frames and relax_many outcomes (WAL): states, progress, expiry
    manager   `JobManager`: the job threads, submit, cancel, status, subscribers, shutdown
    cluster   jobs on a dask.distributed cluster (`--scheduler`): frames back through a Queue, cancel by an Event

Units: eV, Å, eV/Å, fs, K, GPa; stress eV/Å³ (ASE Voigt order xx yy zz yz xz xy).
"""
from .limits import JobInputError, JobLimits, JobQueueFull, JobTooLarge
from .manager import JobManager
from .spec import Halt, JobSpec, MDJob, MDParameters, RelaxJob, RelaxManyJob, RelaxParameters

__all__ = ["JobManager", "JobLimits", "JobInputError", "JobTooLarge", "JobQueueFull", "JobSpec", "RelaxJob",
           "MDJob", "RelaxManyJob", "RelaxParameters", "MDParameters", "Halt"]
