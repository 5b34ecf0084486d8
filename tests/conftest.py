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


@pytest.fixture(scope="module")
def server_blas_threads():
    """BLAS on one thread for the whole process while a module runs, as `aceserver serve` sets it
    (--blas-threads, default 1; `aceserver.serving.process`): the jobs modules run the server's
    JobManager in this process, and ASE's cell filter (`scipy.linalg.logm` every step) and γ's
    products on OpenBLAS's default threads cost 5-10x as much on a busy machine (the modules took
    147-164 s instead of 33 s on a 2-core box with one core busy). Set from the main thread, where
    pytest runs the tests; restored afterwards, so other modules keep the libraries' defaults."""
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1, user_api="blas"):
        yield
