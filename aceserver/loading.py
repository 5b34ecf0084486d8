"""`load_model(path)`: a model file of either family, by its format.

An aceserver model file (JSON, see `io.modelfile`) holds an ace1 model (`ace1.model.ACEModel`) or
a converted pacemaker potential; a `.yace` file is a pacemaker potential
(`pacemaker.potential.PACEPotential`). Both evaluate through `evaluation.SitePotential`.
"""
from __future__ import annotations

from pathlib import Path

from .ace1.model import ACEModel
from .io import modelfile
from .pacemaker.potential import MODEL_KIND, PACEPotential, load_yace


def load_model(path):
    """Load a potential: an aceserver model file (written by `ACEModel.save` or `aceserver
    convert`; no basis is rebuilt) or a pacemaker `.yace` file. Returns an ACEModel or a
    PACEPotential; both evaluate through the same interface."""
    if is_yace(path):
        return load_yace(path)
    doc = modelfile.read(path)
    if doc.get("model") == MODEL_KIND:
        model = PACEPotential.from_document(doc, source=str(path))
    else:
        model = ACEModel.from_document(doc, source=str(path))
        model._sha256 = doc["sha256"]
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
