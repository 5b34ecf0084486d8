"""Rounding bounds for sums evaluated in another order (threads, blocks): recursive summation of n
terms errs by at most (n-1)ε Σ|terms| (Higham, Accuracy and Stability of Numerical Algorithms, §4.2),
so two orderings of the same terms differ by at most 2nε Σ|terms|."""
import numba
import numpy as np

from aceserver.kernels import site_pass


def scatter_bounds(model, at):
    """Worst-case rounding bounds of the force/virial scatter summed in another order (blocks of atoms
    on threads, then the blocks): recursive summation of n terms errs by at most (n-1)ε Σ|terms|
    (Higham §4.2), once per ordering, so two orderings differ by 2nε Σ|terms|. Terms: the pair
    gradients G_p = ∂E_i/∂R_ij of the serial site pass (aceserver.kernels); per atom, its own
    pairs and the pairs naming it as neighbour; for the virial, every G_p ⊗ R_p."""
    eps = np.finfo(float).eps
    z, first, nbr, R = model._neighbours(at.numbers, at.positions, at.cell[:], at.pbc)
    _, G, _ = site_pass.fast_serial(first, nbr, R, z, model._tables(False), True)
    owner = np.repeat(np.arange(len(at)), np.diff(first))
    absG = np.abs(G)
    per_atom = np.zeros((len(at), 3))
    np.add.at(per_atom, owner, absG)
    np.add.at(per_atom, nbr, absG)
    n_atom = np.bincount(owner, minlength=len(at)) + np.bincount(nbr, minlength=len(at)) + numba.get_num_threads()
    f_bound = 2 * n_atom[:, None] * eps * per_atom
    w_bound = 2 * len(G) * eps * np.abs(G).T @ np.abs(R)
    return f_bound, w_bound
