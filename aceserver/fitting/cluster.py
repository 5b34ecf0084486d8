"""Reduction of the fit's least-squares system on the workers of a ``dask.distributed`` cluster.

The configurations are cut into the leaves of :func:`streaming.leaves` (whole configurations, each
named by file and frame numbers), one task each.
A task runs on a worker: it builds the model from its definition (once per worker process, cached),
reads its frames from the file (a filesystem shared with the client), and reduces their rows to
per-(config_type, kind) triangular factors (:mod:`.streaming`). The factors are combined pairwise in the
binary tree of :func:`streaming.tree_merge`, so the result is the local streaming fit's whichever
worker ran what and when;
a worker that dies is replaced by Dask and its lost tasks are run again.

Only plain data travels: the model definition (``ace1_model`` keywords and E0), observation keys,
file names and frame numbers out; numpy arrays back. Dask itself pickles the task functions (by
reference: workers import ``aceserver``) and its own messages; run it on a network you trust
(see docs/distributed-fitting.md). Nothing here imports Dask at module level.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import ase.io

from . import streaming
from . import config
from .data import Config, FitDataError, Keys, config_from_atoms

_MODELS: dict = {}      # per worker process: model definition → built model


def model_definition(model_kwargs: dict, E0: dict) -> dict:
    """What a worker needs to build the model: ``aceserver.ace1_model`` keywords and E0 (eV)."""
    return json.loads(json.dumps({"model": dict(model_kwargs), "E0": {str(k): float(v) for k, v in E0.items()}}))


def worker_model(defn: dict):
    """The model of a definition, built once per process."""
    key = json.dumps(defn, sort_keys=True)
    model = _MODELS.get(key)
    if model is None:
        model = config.build_model(defn["model"], defn["E0"])
        model.E0 = dict(defn["E0"])
        _MODELS[key] = model
    return model


def read_frames(path: str, frames: list[int], keys: Keys, elements: list[str]) -> list[Config]:
    """The configurations of ``frames`` (0-based, in the order given) of an extended-XYZ file,
    checked as by :func:`data.read_configs` (same errors, naming file, frame and field)."""
    frames = [int(f) for f in frames]
    if not Path(path).exists():
        raise FitDataError("no such file (on this worker)", str(path))
    want = set(frames)
    lo, hi = min(frames), max(frames)
    got = {}
    it = ase.io.iread(str(path), index=slice(lo, hi + 1), format="extxyz")
    for frame in range(lo, hi + 1):
        try:
            atoms = next(it)
        except StopIteration:
            raise FitDataError(f"the file has no frame {frame} (it has changed since it was read?)",
                               str(path), frame) from None
        except Exception as exc:  # ase raises many types for unreadable frames
            raise FitDataError(f"cannot read extended XYZ: {exc}", str(path), frame) from exc
        if frame in want:
            got[frame] = config_from_atoms(atoms, keys, str(path), frame, elements)
    return [got[f] for f in frames]


def reduce_task(defn: dict, keys: dict, sources: list, chunk_rows: int | None = None) -> dict:
    """Worker task: read ``sources`` = [(file, [frames], [config_types])] (one leaf) and return its
    factors as a payload. The config_types are the caller's (which may have relabelled the
    configurations, e.g. by `data.group_by_force`), not the file's."""
    model = worker_model(defn)
    k = Keys(**keys)
    elements = list(model.basis.elements)
    configs = []
    for path, frames, types in sources:
        read = read_frames(path, frames, k, elements)
        for c, t in zip(read, types):
            c.config_type = t
        configs += read
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):      # the numbers of a local fit, whatever BLAS
        return streaming.reduce_leaf(model, configs, chunk_rows).to_payload()


def merge_task(a: dict, b: dict) -> dict:
    """Worker task: one node of the reduction tree."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        gf = streaming.GroupFactors.from_payload(a)
        return gf.merge(streaming.GroupFactors.from_payload(b)).to_payload()


def _sources(configs: list[Config]) -> list:
    """[(file, [frames], [config_types])] runs of one leaf, in order."""
    out = []
    for c in configs:
        if not c.source or c.frame < 0:
            raise ValueError("distributed assembly needs configurations read from files (source and frame)")
        if out and out[-1][0] == c.source:
            out[-1][1].append(c.frame)
            out[-1][2].append(c.config_type)
        else:
            out.append((c.source, [c.frame], [c.config_type]))
    return out


def _length_basis(defn: dict) -> int:
    return int(worker_model(defn).length_basis)


class DaskReducer:
    """``reducer(configs) -> GroupFactors`` for :func:`fit_model.acefit`, computed on a Dask cluster.

    ``client``: a ``dask.distributed.Client``. ``definition``: :func:`model_definition`. ``keys``:
    the observation keys. ``n_basis``: the basis size (default: asked of a worker). ``leaf_rows``:
    rows per task (default that of :func:`streaming.leaves`, which gives the leaves and the tree of a
    local streaming fit and so its numbers; another value gives other rounding). ``on_task(done,
    total)``: called after each task.
    """

    path = "dask"

    def __init__(self, client, definition: dict, keys: Keys, n_basis: int | None = None,
                 leaf_rows: int | None = None, chunk_rows: int | None = None, progress: bool | None = None,
                 on_task=None):
        self.client = client
        self.definition = definition
        self.keys = dataclasses.asdict(keys)
        self.leaf_rows = leaf_rows
        self.n_basis = n_basis
        self.chunk_rows = chunk_rows
        self.progress = progress
        self.on_task = on_task

    def __call__(self, configs: list[Config]) -> streaming.GroupFactors:
        from dask.distributed import as_completed
        from tqdm.auto import tqdm

        if not configs:
            raise ValueError("no configurations to assemble")
        if self.n_basis is None:
            self.n_basis = self.client.submit(_length_basis, self.definition, pure=False).result()
        cut = streaming.leaves(configs, self.n_basis, self.leaf_rows)
        futures = [self.client.submit(reduce_task, self.definition, self.keys, _sources([configs[i] for i in run]),
                                      self.chunk_rows, pure=False) for run in cut]
        sizes = {f.key: len(run) for f, run in zip(futures, cut)}
        level = list(futures)
        while len(level) > 1:     # a fixed binary tree: the result does not depend on timing
            nxt = [self.client.submit(merge_task, level[i], level[i + 1], pure=False)
                   for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            level = nxt
        root = level[0]
        del level
        progress = self.progress
        if progress is None:
            progress = sys.stderr.isatty()
        done = 0
        try:
            with tqdm(total=len(configs), desc="reducing on dask", unit="config", disable=not progress) as bar:
                for fut in as_completed(futures):
                    if fut.status == "error":
                        fut.result()          # raises the worker's error (e.g. FitDataError: file, frame, field)
                    done += 1
                    bar.update(sizes[fut.key])
                    if self.on_task is not None:
                        self.on_task(done, len(futures))
            del futures, fut
            payload = root.result()
        except BaseException:
            self.client.cancel([root])
            raise
        return streaming.GroupFactors.from_payload(payload)


def local_cluster(n_workers: int, threads_per_worker: int = 1):
    """A ``LocalCluster`` of ``n_workers`` processes on 127.0.0.1 (BLAS single-threaded in each)."""
    from dask.distributed import LocalCluster
    one = str(threads_per_worker)
    return LocalCluster(n_workers=int(n_workers), threads_per_worker=int(threads_per_worker), processes=True,
                        host="127.0.0.1", dashboard_address=None,
                        env={"OMP_NUM_THREADS": one, "OPENBLAS_NUM_THREADS": one, "MKL_NUM_THREADS": one})
