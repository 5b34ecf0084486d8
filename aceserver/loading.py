"""`load_model(path)`: a model file of either family, by its format, with its active set.

An aceserver model file (JSON, see `io.modelfile`) holds an ace1 model (`ace1.model.ACEModel`) or
a converted pacemaker potential; a `.yace` file is a pacemaker potential
(`pacemaker.potential.PACEPotential`). Both evaluate through `evaluation.SitePotential`.

Active sets (for the extrapolation grade γ): `<stem>.activeset.npz` beside the model file (see
`io.activeset_file`) is attached at load when it was built for this model (same sha256); A is
recomputed from the stored environments of the active atoms (`active_set_rows`) and inverted.
A sidecar of another model is not attached; why is kept in `model.active_set_problem`, which a γ
request's error quotes. `load_model(path, active_set=FILE)` takes an explicit sidecar or a
pacemaker `.asi` (A⁻¹ per element, no sha256 to check).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.linalg

from .ace1.model import ACEModel
from .errors import ModelFileError
from .io import activeset_file, asi, modelfile
from .pacemaker.potential import MODEL_KIND, PACEPotential, load_yace

EPS = np.finfo(np.float64).eps


def load_model(path, *, active_set=None):
    """Load a potential: an aceserver model file (written by `ACEModel.save` or `aceserver
    convert`; no basis is rebuilt) or a pacemaker `.yace` file. Returns an ACEModel or a
    PACEPotential; both evaluate through the same interface.

    active_set: None (attach `<stem>.activeset.npz` beside the model if there is one and it
    belongs to this model), False (none), or the path of an `.activeset.npz` or `.asi` file
    (attached, or `ModelFileError`/`ValueError` saying why not)."""
    if is_yace(path):
        model = load_yace(path)
    else:
        doc = modelfile.read(path)
        if doc.get("model") == MODEL_KIND:
            model = PACEPotential.from_document(doc, source=str(path))
        else:
            model = ACEModel.from_document(doc, source=str(path))
            model._sha256 = doc["sha256"]
    if active_set is None:
        sidecar = activeset_file.sidecar_path(path)
        if sidecar.is_file():
            try:
                attach_active_set_file(model, sidecar)
            except (ModelFileError, ValueError) as err:
                model.active_set_problem = f"the active-set file beside the model is not used: {err}"
    elif active_set is not False:
        attach_active_set_file(model, active_set)
    return model


def attach_active_set_file(model, path) -> None:
    """Attach the active set of an `.activeset.npz` sidecar (checked against the model's sha256,
    A recomputed and inverted) or a pacemaker `.asi` file (A⁻¹ as stored)."""
    path = Path(path)
    if path.name.endswith(activeset_file.SUFFIX) or not path.name.endswith(".asi"):
        env = activeset_file.read(path)
        if env.model_sha256 != model.sha256:
            raise ModelFileError(
                f"{path.name} was built for the model with sha256 {env.model_sha256[:12]}…, not for "
                f"this one ({str(model.sha256)[:12]}…)")
        model.attach_active_set(inverses_from_environments(model, env, path.name),
                                model_sha256=env.model_sha256)
    else:
        model.attach_active_set(asi.read(path))


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
    """{element: A⁻¹}: A from `active_set_rows`, inverted by LU (scipy). A is refused when it is
    singular to working precision (reciprocal condition number below L·ε) or when its log |det|
    differs from the stored one by more than the rounding of the recomputed rows allows
    (|Δ log|det A|| = |tr(A⁻¹ ΔA)| ≤ L·κ(A)·ε per unit of relative change; we allow 100×)."""
    out = {}
    for el, A in active_set_rows(model, env).items():
        L = A.shape[0]
        lu, piv = scipy.linalg.lu_factor(A, check_finite=True)
        rcond = scipy.linalg.lapack.dgecon(lu, np.abs(A).sum(axis=0).max(), norm="1")[0]
        if not rcond > L * EPS:
            raise ModelFileError(f"{name}: the recomputed active set of {el} is singular "
                                 f"(reciprocal condition number {rcond:.2e})")
        log_det = float(np.log(np.abs(np.diag(lu))).sum())
        stored = float(env.log_abs_det[env.elements.index(el)])
        if abs(log_det - stored) > 100 * L * EPS / rcond:
            raise ModelFileError(f"{name}: the recomputed active set of {el} has log|det A| "
                                 f"{log_det:.12g}, the file says {stored:.12g}: it does not "
                                 "belong to this model")
        out[el] = scipy.linalg.lu_solve((lu, piv), np.eye(L))
    return out


def is_yace(path) -> bool:
    """A `.yace` file: by extension, or (any other name) by content that is YAML, not JSON."""
    p = Path(path)
    if p.suffix.lower() == ".yace":
        return True
    if p.suffix.lower() == ".json" or not p.is_file():
        return False
    with open(p, "rb") as fh:
        head = fh.read(256).lstrip()
    return head.startswith(b"elements:")
