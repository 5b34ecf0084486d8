"""The evaluation layer: one interface between the potentials and every front end.

    result          `Evaluation`, the one result type (units and shapes on every field)
    postprocess     stress, virial and Voigt conventions, the committee spread: defined once
    uncertainty     the extrapolation grade γ (active-set inverses, thresholds, chunked rows)
    verlet          `VerletList`, a neighbour list reused while atoms move less than skin/2
    site_potential  `SitePotential`: structure -> neighbour list -> site tables -> `Evaluation`;
                    both model families (ace1, pacemaker) derive from it
    many            `evaluate_many`: many structures packed into one kernel pass, an
                    `Evaluation` each, errors by index (`BatchError`); `neighbour_lists`
    many_uncertainty  γ, committee site energies and descriptors of packed structures (one
                    rows pass per chunk, products by species in blocks)

Front ends (ASE calculator, HTTP, i-PI, CLI) call `potential.evaluate(...)` and read the
`Evaluation`; none recomputes what `postprocess` defines.
"""
from .postprocess import volume
from .result import Evaluation

__all__ = ["Evaluation", "volume"]
