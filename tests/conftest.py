import numpy as np
import pytest

import aceserver


@pytest.fixture(scope="session")
def si_model():
    """Si, order 3, totaldegree 8, rcut 5.0, random decaying parameters."""
    m = aceserver.ace1_model(elements=["Si"], order=3, totaldegree=8, rcut=5.0, E0={"Si": -158.5})
    rng = np.random.default_rng(7)
    m.parameters = rng.normal(size=m.length_basis) / (1 + np.arange(m.length_basis)) ** 0.5
    return m


@pytest.fixture(scope="session")
def tial_model():
    """Ti+Al, order 3, totaldegree 6, rcut 5.5, random decaying parameters."""
    m = aceserver.ace1_model(elements=["Ti", "Al"], order=3, totaldegree=6, rcut=5.5,
                             E0={"Ti": -1586.0195, "Al": -105.5954})
    rng = np.random.default_rng(11)
    m.parameters = rng.normal(size=m.length_basis) / (1 + np.arange(m.length_basis)) ** 0.5 * 0.1
    return m
