"""A model's active set from a file: the sidecar `<stem>.activeset.npz` (`io.activeset_file`: the
environments of the active atoms, tied to the model by sha256) or a pacemaker `.asi` (A⁻¹ per
element), attached for the extrapolation grade γ (`SitePotential.attach_active_set`).

From a sidecar, A is recomputed (`active_set_rows`: one call of the model's descriptor kernel on
the stored neighbour vectors, then the floor rows) and inverted by LU (`inverses_from_environments`,
with checks). `load_model` attaches the sidecar beside a model lazily (`PendingActiveSet`): loading
checks the file and its sha256 (0.1 s for zuo-Si); the inversion (1634² here: 4.5 s on a busy
2-core box, L³ flops) waits for the first γ request, so that servers and `aceserver models` that
never ask for γ do not pay it. A problem found then becomes `model.active_set_problem` and the
request's `NoActiveSetError`.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import scipy.linalg

from .errors import ModelFileError, NoActiveSetError
from .io import activeset_file, asi

EPS = np.finfo(np.float64).eps


def attach_active_set_file(model, path, lazy: bool = False) -> None:
    """Attach the active set of an `.activeset.npz` sidecar (checked against the model's sha256,
    A recomputed and inverted, now or at the first γ request when lazy) or of a pacemaker `.asi`
    file (A⁻¹ as stored). `ModelFileError`/`ValueError` say why a file does not fit."""
    path = Path(path)
    if path.name.endswith(".asi") and not path.name.endswith(activeset_file.SUFFIX):
        model.attach_active_set(asi.read(path))
        return
    if not hasattr(model, "_descriptor_rows"):
        raise ModelFileError(f"{path.name}: this model ({type(model).__name__}) has no "
                             "per-atom descriptors to recompute its active set from")
    env = activeset_file.read(path)
    if env.model_sha256 != model.sha256:
        raise ModelFileError(
            f"{path.name} was built for the model with sha256 {env.model_sha256[:12]}…, not for "
            f"this one ({str(model.sha256)[:12]}…)")
    if lazy:
        model.active_set = PendingActiveSet(model, env, path.name)
        model.active_set_problem = None
    else:
        model.attach_active_set(inverses_from_environments(model, env, path.name),
                                model_sha256=env.model_sha256)


class PendingActiveSet:
    """Stands in for `uncertainty.ActiveSetInverse` until `inverses` is first read: then A⁻¹ is
    computed (once, under a lock) and attached to the model in its place. If that fails the
    model is left without an active set, the reason in `model.active_set_problem`, and the
    reader gets `NoActiveSetError`."""

    def __init__(self, model, env, name: str):
        self._model, self._env, self._name = model, env, name
        self.model_sha256 = env.model_sha256
        self._lock = threading.Lock()

    @property
    def sizes(self) -> dict[str, int]:
        """{element: L} without computing A⁻¹ (for model descriptions)."""
        return {el: int(a + f) for el, a, f in zip(self._env.elements, self._env.atom_counts,
                                                   self._env.floor_counts)}

    @property
    def inverses(self) -> dict[str, np.ndarray]:
        with self._lock:
            model = self._model
            if model.active_set is self:
                try:
                    model.attach_active_set(
                        inverses_from_environments(model, self._env, self._name),
                        model_sha256=self._env.model_sha256)
                except (ModelFileError, ValueError) as err:
                    model.active_set = None
                    model.active_set_problem = ("the active-set file beside the model is not "
                                                f"used: {err}")
            if model.active_set is None:
                raise NoActiveSetError(f"no extrapolation grade γ: {model.active_set_problem}")
            return model.active_set.inverses


def active_set_rows(model, env: activeset_file.ActiveSetEnvironments) -> dict[str, np.ndarray]:
    """{element: A (L, L)}: the descriptor rows of the stored active atoms, in one call of the
    model's descriptor hook, then the floor rows. Each active atom is a centre whose neighbours
    are given by the stored vectors (no positions are added or subtracted, so the rows are the
    ones MaxVol chose, up to the order of the sums)."""
    if env.rcut != model.rcut:
        raise ModelFileError(f"the active-set environments were cut at {env.rcut} Å; the model's "
                             f"cutoff is {model.rcut} Å")
    n, p = len(env.centre_numbers), len(env.numbers)
    z = model._lookup[np.concatenate([env.centre_numbers, env.numbers])]
    if (z < 0).any():
        raise ModelFileError("the active-set environments hold elements the model does not have")
    first = np.concatenate([env.offsets, np.full(p, p, dtype=np.int64)])
    nbr = np.arange(n, n + p, dtype=np.int64)
    D = model._descriptor_rows(z, first, nbr, np.ascontiguousarray(env.vectors),
                               np.arange(n, dtype=np.int64))
    sizes = model.descriptor_sizes
    out = {}
    for el, (atoms, floor) in env.element_slices().items():
        L = sizes.get(el)
        if L is None or L != (atoms.stop - atoms.start) + (floor.stop - floor.start):
            raise ModelFileError(f"the active set of {el} has {atoms.stop - atoms.start} atoms and "
                                 f"{floor.stop - floor.start} floor rows; the model's {el} "
                                 f"descriptors have {L} columns")
        if (z[atoms] != model.elements.index(el)).any():
            raise ModelFileError(f"the active atoms listed for {el} are not all {el}")
        cols = env.floor_columns[floor]
        if len(cols) and cols.max() >= L:
            raise ModelFileError(f"a floor row of {el} names column {cols.max()} of {L}")
        F = np.zeros((len(cols), L))
        F[np.arange(len(cols)), cols] = env.floor_values[floor]
        out[el] = np.vstack([D[atoms, :L], F])
    return out


def inverses_from_environments(model, env, name="active-set file") -> dict[str, np.ndarray]:
    """{element: A⁻¹}: A from `active_set_rows`, inverted by LU (LAPACK getrf, then solves). γ =
    max |b A⁻¹| does not change when the columns of A and b are scaled alike, and LU with row
    pivoting makes the same choices, so A is judged by its column-equilibrated copy A_s (columns
    divided by their largest |value|): refused when A_s is singular to working precision
    (reciprocal condition number below L·ε) or when log |det A| differs from the stored one by
    more than the rounding of the recomputed rows allows (|Δ log|det A|| = |tr(A_s⁻¹ ΔA_s)| ≤
    L·κ(A_s)·ε for rows recomputed to a few ε; we allow 100×)."""
    out = {}
    for el, A in active_set_rows(model, env).items():
        L = A.shape[0]
        lu, piv, info = scipy.linalg.lapack.dgetrf(A)
        scale = np.abs(A).max(axis=0)
        scale[scale == 0] = 1.0
        lu_s = np.tril(lu, -1) + np.triu(lu) / scale     # LU of A_s: P L (U diag(1/scale))
        rcond = scipy.linalg.lapack.dgecon(lu_s, np.abs(A / scale).sum(axis=0).max(),
                                           norm="1")[0] if info == 0 else 0.0
        if not rcond > L * EPS:
            raise ModelFileError(f"{name}: the recomputed active set of {el} is singular "
                                 f"(reciprocal condition number {rcond:.2e} with scaled columns)")
        log_det = float(np.log(np.abs(np.diag(lu))).sum())
        stored = float(env.log_abs_det[env.elements.index(el)])
        if abs(log_det - stored) > 100 * L * EPS / rcond:
            raise ModelFileError(f"{name}: the recomputed active set of {el} has log|det A| "
                                 f"{log_det:.12g}, the file says {stored:.12g}: it does not "
                                 "belong to this model")
        # lu_solve with the identity: 1.2 s at L = 1634, where getri with scipy's default
        # workspace (unblocked) takes 25 s
        out[el] = scipy.linalg.lu_solve((lu, piv), np.eye(L))
    return out
