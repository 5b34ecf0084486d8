"""numba kernels (nogil, cached): neighbour list, ...."""
