"""Hot kernels (numba, cache=True, nogil=True): neighbour list, spherical harmonics, radial
splines, the ACE site pass (A -> AA -> energy and its pullback, or the basis rows for fitting)
and force/virial assembly."""
