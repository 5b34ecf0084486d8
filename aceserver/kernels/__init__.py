"""Hot kernels (numba: cache=True, nogil=True); they import nothing from aceserver but
`aceserver.errors`. In data-flow order:

    neighbours        neighbour_list(positions, cell, pbc, rcut): input checks, grid plan, limits
    neighbour_search  the cell-list search kernels (binning, scan, pairs, sort, Verlet refresh)
    lattice           reduced basis of the periodic lattice for binning (cached per cell)
    batch_neighbours  the same search for many small structures inside one kernel call
    batch_checks      a packed batch's input checks and its checks after the search
    ylm               real spherical harmonics and gradients (SpheriCart order, no Condon-Shortley)
    radial            ace1 radials: Agnesi transform, splines, pair envelope
    pace_features     pacemaker radials from Hermite tables, embedding, core repulsion / ZBL
    site_tables       the kernel-table contract (`SiteTables`) and the flat A index
    atomic_base       per site: neighbours by species, features, A and AA (DAG) and their pullbacks
    site_pass         the fast form: site energies and pair gradients (serial or threaded)
    scatter           forces and virial from the pair gradients
    single_call       one small serial evaluation's steps fused into one call (Verlet step, pass, scatter)
    sums              sums in numpy's order (energies, the committee spread, the one-body energy)
    batch_pass        site pass and scatter over many packed structures (a virial per structure)
    basis_rows        the basis form for fitting: energy, force and virial rows per parameter
    pace_projections  per-atom projections of pacemaker potentials (their descriptors, for γ)
"""
