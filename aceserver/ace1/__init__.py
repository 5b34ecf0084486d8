"""The ace1 model family: ACEpotentials.jl's `ace1_model` basis (built in `aceserver.basis`) with its
linear parameters, compiled to the kernels' site tables.

    model   `ACEModel`, `ace1_model(...)`: parameters, committee, tables, fitting rows, model file
"""
