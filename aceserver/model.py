"""Deprecated import path, kept for one release: use `aceserver.ace1_model`, `aceserver.load_model`
(or `aceserver.ace1.model`, `aceserver.loading`)."""
import warnings

from .ace1.model import ACEModel, ace1_model, used_lmax  # noqa: F401
from .evaluation.site_potential import PARALLEL_MIN_ATOMS, SitePotential  # noqa: F401
from .loading import is_yace, load_model  # noqa: F401

warnings.warn("aceserver.model is deprecated and will be removed in the next release; import "
              "ace1_model, ACEModel and load_model from aceserver", DeprecationWarning, stacklevel=2)
