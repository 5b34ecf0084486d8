"""Fitting linear ACE models to extended-XYZ data (ACEpotentials.jl's ``acefit!`` workflow).

Modules, in data-flow order:

    data          reading extended XYZ, observation keys, per-config_type weights, E0
    assembly      weighted least-squares rows from ``model.basis_rows``; row groups (config_type, kind)
    priors        smoothness priors (the column scales γ)
    solvers       QR, BLR, truncated SVD, rank-revealing QR, ASP, ARD; ``solve_from_svd`` on shared SVD factors
    sparse        ASP (lasso homotopy) and ARD on the triangular factor of the system
    streaming     the system reduced block by block to per-group triangular factors (fits larger
                  than memory); peak-memory measurement
    cluster       that reduction on Dask workers
    fit_model     ``acefit``: data → weighted, prior-scaled least squares → parameters (+ committee)
    error_tables  RMSE/MAE per config_type (the one RMSE/MAE computation), printed tables
    plots         parity plots
    active_set    D-optimal active sets by block-wise MaxVol; the extrapolation grade γ
    active_set_build  a model's active sets from structures, streamed (``aceserver activeset``)
    active_set_extend a refitted model's active set: the old one extended by new structures
    gamma_report  γ statistics of a model over data, per species, and its most extrapolative frames
    config        YAML fit configurations
    workflow      ``aceserver fit``/``eval``/``activeset`` as library calls: ``run_fit``, ``load_data``,
                  ``estimate``, provenance, ``evaluate_errors``, ``read_data``, ``active_set_from_files``
    incremental   a fit's kept state (the factors): ``fit_with_state``, ``update`` with new data,
                  the data versions (``aceserver fit --save-state`` / ``--update``)
    selection/    hyperparameter selection on one assembly: validation split, K-fold
                  cross-validation, nested bases, scoring rules

    from aceserver.fitting import acefit, read_configs, Keys
    train = read_configs("Si_tiny.xyz", Keys("dft_energy", "dft_force", "dft_virial"))
    result = acefit(model, train, weights={"default": {"E": 30, "F": 1, "V": 1}}, solver="blr")
"""
from .data import Config, FitDataError, Keys, read_configs
from .fit_model import FitResult, acefit

__all__ = ["Config", "FitDataError", "FitResult", "Keys", "acefit", "read_configs"]
