"""Product DAG of the AA basis (aceserver.basis.products): every AA function is the product of
its A factors, and the node order is the one the kernels rely on."""
import numpy as np

from aceserver.basis.ace1 import build_ace1_basis
from aceserver.basis.products import build_product_dag


def _dag():
    basis = build_ace1_basis(["Si"], order=3, totaldegree=12)
    return basis.aa_spec, build_product_dag(basis.aa_spec)


def test_dag_products_equal_direct_products():
    aa_spec, (parent, node_a, aa_node) = _dag()
    A = np.random.default_rng(0).normal(size=aa_spec.max() + 1)
    AA = np.empty(len(parent))
    for k in range(len(parent)):
        assert parent[k] < k                       # parents are evaluated first
        AA[k] = A[node_a[k]] * (AA[parent[k]] if parent[k] >= 0 else 1.0)
    direct = np.array([np.prod(A[row[row >= 0]]) for row in aa_spec])
    # products of ≤ 3 factors (order 3) formed in another order: ≤ 3ε relative (measured 2.2e-16)
    np.testing.assert_allclose(AA[aa_node], direct, rtol=1e-13)


def test_children_of_a_parent_are_adjacent_and_parents_are_swept_in_order():
    _, (parent, node_a, _) = _dag()
    depth = np.zeros(len(parent), dtype=int)
    for k in range(len(parent)):
        depth[k] = depth[parent[k]] + 1 if parent[k] >= 0 else 0
    assert np.all(np.diff(depth) >= 0)             # order by order
    for d in range(1, depth.max() + 1):
        p = parent[depth == d]
        assert np.all(np.diff(p) >= 0), f"parents of order {d + 1} not in increasing order"
