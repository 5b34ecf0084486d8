"""The public names survive the redesign (issue 20): the top-level API, and the old import paths
`aceserver.model` (deprecated, one release) and `aceserver.basis`."""
import importlib
import sys

import pytest

import aceserver


def test_top_level_names_are_the_library_objects():
    from aceserver.ace1.model import ACEModel, ace1_model
    from aceserver.calculator import ACECalculator
    from aceserver.evaluation.result import Evaluation
    from aceserver.loading import load_model
    assert aceserver.ace1_model is ace1_model and aceserver.ACEModel is ACEModel
    assert aceserver.load_model is load_model and aceserver.ACECalculator is ACECalculator
    assert aceserver.Evaluation is Evaluation and aceserver.evaluation.Evaluation is Evaluation


def test_old_model_path_works_and_says_it_is_deprecated():
    sys.modules.pop("aceserver.model", None)
    with pytest.warns(DeprecationWarning, match="aceserver.model is deprecated"):
        old = importlib.import_module("aceserver.model")
    assert old.ace1_model is aceserver.ace1_model and old.load_model is aceserver.load_model
    assert old.ACEModel is aceserver.ACEModel


def test_old_basis_path_builds_the_same_basis():
    from aceserver.basis.ace1 import build_ace1_basis
    basis = build_ace1_basis(["Si"], 2, 6, rcut=5.0)
    model = aceserver.ace1_model(elements=["Si"], order=2, totaldegree=6, rcut=5.0)
    assert basis.length_basis == model.length_basis > 0
