"""Learning as a service: labelled structures posted to a served model are logged durably and
folded into its fit state in the background, and the refitted model is swapped in (no HTTP here;
the routes are `serving/http/routers/learn.py`).

    datalog   the durable data log (SQLite, fsynced commits): numbered batches (data versions)
    labels    one labelled structure -> a validated training `Config` (units: eV, Å, eV/Å)
    learner   one model's learning: post, status, the refit thread, atomic model/state writes
"""
from .datalog import DataLog, DataLogError
from .labels import LabelError, labelled_config
from .learner import Learner, LearningError, PendingFull, recover

__all__ = ["DataLog", "DataLogError", "LabelError", "Learner", "LearningError", "PendingFull", "labelled_config", "recover"]
