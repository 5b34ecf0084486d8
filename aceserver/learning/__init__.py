"""Active learning: the loop (``aceserver learn``) and learning as a service (labelled structures
posted to a served model). No HTTP here: the routes are `serving/http/routers/learn.py`, and the loop
runs its exploration jobs in this process.

The loop:
    config     the YAML configuration (the fit sections checked by `fitting.config`)
    explore    MD/relax runs through `jobs.runner`, halted on max γ; frames with γ
    select     a greedy D-optimal subset of the candidates (MaxVol over their descriptor rows)
    labellers  teacher model, ASE calculator by import path, shell command (extended XYZ, timeout)
    store      the labelled data set (fsynced per frame), the resumable state, frame files
    loop       `Learner`: the iterations, stopping rules, resume
    report     report.json and report.png (errors and γ per iteration)
    progress   tqdm progress bars, plain lines without it

The service:
    datalog    the durable data log (SQLite, fsynced commits): numbered batches (data versions)
    export     the log written out a record at a time: extended XYZ (lossless), msgpack
    labels     one posted labelled structure -> a validated training `Config`
    learner    `ModelLearner`: one served model's learning: post, status, the refit thread,
               atomic model/state writes

Units: eV, Å, eV/Å, eV/Å³, fs, K, GPa; reported errors meV/atom and eV/Å.
"""
from .config import LearnConfig, LearnConfigError, load_config
from .datalog import DataLog, DataLogError
from .labels import PostedLabelError, labelled_config
from .learner import LearningError, ModelLearner, PendingFull, recover
from .loop import Learner, LearnError

__all__ = ["DataLog", "DataLogError", "LearnConfig", "LearnConfigError", "LearnError", "Learner",
           "LearningError", "ModelLearner", "PendingFull", "PostedLabelError", "labelled_config",
           "load_config", "recover"]
