"""The pacemaker model family: `.yace` potentials, read, evaluated and written.

    yace            the `.yace` format: one reader and one writer (units eV, Å)
    radial_basis    pacemaker's radial basis g_k(r) and core repulsion
    ctilde          C-tilde coupling tables -> real product DAGs per species
    potential       `PACEPotential`: a .yace potential compiled to the kernels' site tables
    export_radial   least-squares fit of ace1 radials in pacemaker's radial basis
    export_angular  ace1 real products -> pacemaker's complex C-tilde functions
    export          an ace1 model written as a .yace file
"""
