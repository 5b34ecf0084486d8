"""The pacemaker model family: `.yace` potentials, read, evaluated and written.

    yace            the `.yace` format: the one reader and the one writer (units eV, Å)
    radial_basis    pacemaker's radial basis g_k(r) (the one implementation), core repulsion, and
                    their cubic Hermite tables for the kernels
    ctilde          C-tilde coupling tables -> real product DAGs per species
    projections     per-function products and DAG for the projection rows (descriptors, γ)
    potential       `PACEPotential`: a .yace potential compiled to the kernels' site tables
    export_radial   least-squares fit of ace1 radials in pacemaker's radial basis
    export_angular  ace1 real products -> pacemaker's complex C-tilde functions
    export          an ace1 model written as a .yace file; `save_yace` for any loaded model

Shared with the ace1 family, below this package: the real <-> complex harmonics conversion and
√(4π) (`basis.harmonics`), the flat A index (`kernels.site_tables.a_index`/`a_fields`).
"""
