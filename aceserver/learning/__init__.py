"""Active learning (``aceserver learn``): explore with the current model, pick where it
extrapolates, label, refit, repeat. Beside serving (it runs jobs in this process and imports no
HTTP code).

    config     the YAML configuration (the fit sections checked by `fitting.config`)
    explore    MD/relax runs through `jobs.runner`, halted on max γ; frames with γ
    select     a greedy D-optimal subset of the candidates (MaxVol over their descriptor rows)
    labellers  teacher model, ASE calculator by import path, shell command (extended XYZ, timeout)
    store      the labelled data set (fsynced per frame), the resumable state, frame files
    loop       `Learner`: the iterations, stopping rules, resume
    report     report.json and report.png (errors and γ per iteration)
    progress   tqdm progress bars, plain lines without it

Units: eV, Å, eV/Å, eV/Å³, fs, K, GPa; reported errors meV/atom and eV/Å.
"""
from .config import LearnConfig, LearnConfigError, load_config
from .loop import Learner, LearnError

__all__ = ["LearnConfig", "LearnConfigError", "LearnError", "Learner", "load_config"]
