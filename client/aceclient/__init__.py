"""Client for an `aceserver serve` HTTP server.

    from aceclient import ACEServerCalculator
    atoms.calc = ACEServerCalculator("http://127.0.0.1:8000")
    # the options and results of aceserver.ACECalculator: committee spreads, γ every 10th calculation
    calc = ACEServerCalculator(url, gamma=True, gamma_every=10, energies_std=True, committee_forces=True)

    jobs = ACEJobs("http://127.0.0.1:8000")            # relaxations and MD on the server
    images = jobs.run(atoms, "md", parameters={"steps": 1000, "temperature_K": 300, "seed": 1})

    learn = ACELearning("http://127.0.0.1:8000")       # labelled data for a `serve --learn` model
    learn.wait("Si", learn.post("Si", dft_frames)["version"])

Units as on the server: energies eV, lengths Å, forces eV/Å, stress eV/Å³ (ASE convention).
"""
from .calculator import ACEServerCalculator
from .jobs import ACEJobs, JobFailedError
from .learning import ACELearning
from .errors import (
    ACEServerConnectionError,
    ACEServerError,
    AuthenticationError,
    InvalidInputError,
    ModelNotFoundError,
    RequestTooLargeError,
    ServerNotReadyError,
)

__version__ = "0.1.0"
__all__ = [
    "ACEServerCalculator",
    "ACEJobs",
    "ACELearning",
    "JobFailedError",
    "ACEServerError",
    "ACEServerConnectionError",
    "AuthenticationError",
    "InvalidInputError",
    "ModelNotFoundError",
    "RequestTooLargeError",
    "ServerNotReadyError",
]
