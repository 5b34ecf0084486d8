"""Construction-time math (numpy only): bond lengths, radial transforms, envelopes, orthonormal
polynomials and their splines, basis specifications and rotation-invariant coupling coefficients.

Nothing here runs per structure; the numba kernels in `aceserver.kernels` consume its arrays.
"""
