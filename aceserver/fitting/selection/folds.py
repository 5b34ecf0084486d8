"""Cross-validation folds: disjoint, seeded sets of configuration indices."""
from __future__ import annotations

import numpy as np

from ..data import Config


def kfold(configs: list[Config], k: int = 5, seed: int = 0, stratify: bool = True) -> list[np.ndarray]:
    """``k`` disjoint held-out sets of configuration indices (seeded). Stratified by config_type:
    each type's configurations are shuffled and dealt round-robin, continuing where the previous type
    stopped, so every fold gets its share of every type and fold sizes differ by at most one.
    Single-atom configurations (isolated atoms, which fix E0) are never held out."""
    k = int(k)
    multi = [i for i, c in enumerate(configs) if c.natoms > 1]
    if k < 2 or k > len(multi):
        raise ValueError(f"k-fold cross-validation needs 2 <= k <= {len(multi)} (multi-atom configurations), "
                         f"got k = {k}")
    rng = np.random.default_rng(seed)
    types = sorted({configs[i].config_type for i in multi}) if stratify else [None]
    out, pos = [[] for _ in range(k)], int(rng.integers(k))
    for t in types:
        idx = np.array([i for i in multi if t is None or configs[i].config_type == t])
        for i in idx[rng.permutation(len(idx))]:
            out[pos % k].append(int(i))
            pos += 1
    return [np.array(sorted(f), dtype=np.int64) for f in out]


def split_blocks(folds: list[np.ndarray], parts: int, seed: int = 0) -> list[list[np.ndarray]]:
    """Each fold split into ``parts`` nearly equal, seeded random subsets (for learning curves)."""
    rng = np.random.default_rng(seed)
    return [[np.sort(p) for p in np.array_split(f[rng.permutation(len(f))], parts)] for f in folds]
