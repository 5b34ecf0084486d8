"""Fitting linear ACE models to extended-XYZ data (ACEpotentials.jl's ``acefit!`` workflow).

Modules: ``data`` (reading, observation keys, weights, E0), ``assembly`` (weighted least-squares rows
from ``model.basis_rows``), ``priors`` (smoothness priors), ``solvers`` (QR, BLR, truncated SVD,
rank-revealing QR), ``errors`` (RMSE/MAE tables), ``plots`` (parity plots), ``config`` (YAML fit
configurations), ``driver`` (``acefit``), ``streaming`` (the system reduced block by block to
per-group triangular factors, for fits larger than memory), ``cluster`` (that reduction on Dask workers).

    from aceserver.fitting import acefit, read_configs, Keys
    train = read_configs("Si_tiny.xyz", Keys("dft_energy", "dft_force", "dft_virial"))
    result = acefit(model, train, weights={"default": {"E": 30, "F": 1, "V": 1}}, solver="blr")
"""
from .data import Config, FitDataError, Keys, read_configs
from .driver import FitResult, acefit

__all__ = ["Config", "FitDataError", "FitResult", "Keys", "acefit", "read_configs"]
