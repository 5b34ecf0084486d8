"""Hyperparameter selection reusing one assembly: on a validation split, or by K-fold cross-validation.

Prior, solver, weights and E0 do not change the design matrix, and a smaller nested basis is a subset
of its columns, so candidates that differ only in those are compared on systems assembled once.

    validation      :func:`evaluate_candidates`: fit on a training system, score on a validation
                    system's rows (:func:`row_errors`)
    folds           :func:`kfold` (seeded, stratified by config_type), :func:`split_blocks`
    nested          :func:`nested_columns`, :func:`prefix_order`: nested bases as leading column blocks
    block_factors   :class:`BlockFactors`: per (block of configurations, row group) triangular factors
    crossval        :func:`cross_validate` (per-fold errors and their mean and spread),
                    :func:`learning_curve` (CV error against training-set size),
                    :func:`nested_cross_validate` (outer folds around the whole selection, with a
                    fixed reference candidate on the same folds), :func:`beats` (the paired rule)
    scoring         :func:`summarise`, :func:`fold_ratios`, :func:`fold_scores`, :func:`target_score`,
                    :func:`one_standard_error` (the simplest candidate within one standard error of
                    the best; optionally paired: the standard error of each candidate's per-fold
                    excess over the best)

Solver dispatch is :func:`aceserver.fitting.solvers.solve_from_svd`; RMSE/MAE are
:func:`aceserver.fitting.error_tables.kind_errors`.

Errors: energy per atom (eV/atom), force components (eV/Å), virial per atom (eV/atom).
"""
from .block_factors import BlockFactors
from .crossval import beats, cross_validate, learning_curve, nested_cross_validate
from .folds import kfold, split_blocks
from .nested import nested_columns, prefix_order
from .scoring import fold_ratios, fold_scores, one_standard_error, summarise, target_score
from .validation import evaluate_candidates, row_errors

__all__ = ["BlockFactors", "beats", "cross_validate", "nested_cross_validate", "evaluate_candidates", "fold_ratios", "fold_scores", "kfold",
           "learning_curve", "nested_columns", "one_standard_error", "prefix_order", "row_errors",
           "split_blocks", "summarise", "target_score"]
