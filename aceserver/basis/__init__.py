"""Construction-time math (numpy only); nothing here runs per structure. The numba kernels in
`aceserver.kernels` consume its arrays. In the order an ace1 basis is built:

    bondlengths   tabulated bond lengths r0 per element (Å)
    transforms    Agnesi distance transforms y(r)
    envelopes     radial and pair envelopes
    polynomials   orthonormal Jacobi/Legendre polynomials and their natural splines
    spec          level-based (totaldegree) radial and product specifications
    harmonics     real <-> complex spherical harmonics, √(4π)
    coupling      Clebsch-Gordan coefficients and rotation-invariant couplings
    products      the product DAG (AA nodes as AA[parent]·A[a]) and its ordering
    ace1          `build_ace1_basis`: ACEpotentials.jl's ace1_model basis from all of the above
"""
