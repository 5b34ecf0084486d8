"""`load_model(path)`: a model file of either family, by its format, with its active set.

An aceserver model file (JSON, see `io.modelfile`) holds an ace1 model (`ace1.model.ACEModel`) or
a converted pacemaker potential; a `.yace` file is a pacemaker potential
(`pacemaker.potential.PACEPotential`). Both evaluate through `evaluation.SitePotential`.

Active sets (for the extrapolation grade γ, see `active_sets`): `<stem>.activeset.npz` beside the
model file is attached when it was built for this model (same sha256), its A⁻¹ computed at the
first γ request. A sidecar of another model is not attached; why is kept in
`model.active_set_problem`, which a γ request's error quotes. `load_model(path, active_set=FILE)`
attaches an explicit sidecar or a pacemaker `.asi` (A⁻¹ per element, no sha256 to check) at once.
"""
from __future__ import annotations

from pathlib import Path

from .ace1.model import ACEModel
from .active_sets import attach_active_set_file
from .errors import ModelFileError
from .io import activeset_file, modelfile
from .pacemaker.potential import MODEL_KIND, PACEPotential, load_yace


def load_model(path, *, active_set=None):
    """Load a potential: an aceserver model file (written by `ACEModel.save` or `aceserver
    convert`; no basis is rebuilt) or a pacemaker `.yace` file. Returns an ACEModel or a
    PACEPotential; both evaluate through the same interface.

    active_set: None (attach `<stem>.activeset.npz` beside the model if there is one and it
    belongs to this model; A⁻¹ is computed at the first γ request), False (none), or the path of
    an `.activeset.npz` or `.asi` file (attached now, or `ModelFileError`/`ValueError` saying why
    not)."""
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
                attach_active_set_file(model, sidecar, lazy=True)
            except (ModelFileError, ValueError) as err:
                model.active_set_problem = f"the active-set file beside the model is not used: {err}"
    elif active_set is not False:
        attach_active_set_file(model, active_set)
    return model


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
