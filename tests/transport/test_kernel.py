"""``kernel.batch_rows`` against the definition it implements, computed the plain way: for every
tolerance delta of the ladder, each user's candidate set A_i(delta) = {t : w_it >= b_i - delta}
(the first argmax alone when the gap to the second best exceeds delta), and per set its head count
and value sums; batches and partitions add."""
from __future__ import annotations

import numpy as np
import pytest

from segmentation.transport.dual import delta_ladder
from segmentation.transport.kernel import GLOBAL, batch_rows, merge_rows


def plain(V, p, deltas):
    """{(level, mask): [m, sums...]} and (n, smax, counts), user by user."""
    n, K = V.shape
    groups, counts, smax = {}, np.zeros(K, dtype=np.int64), 0.0
    for i in range(n):
        w = V[i] - p
        a = int(np.argmax(w))
        counts[a] += 1
        smax += w[a]
        second = np.max(np.delete(w, a)) if K > 1 else -np.inf
        for level, d in enumerate(deltas):
            if w[a] - second > d:
                mask, vec = 1 << a, np.zeros(K + 1)
                vec[0], vec[1 + a] = 1, V[i, a]
            else:
                mask = int(sum(1 << t for t in range(K) if w[t] >= w[a] - d))
                vec = np.concatenate([[1.0], V[i]])
            key = (level, mask)
            groups[key] = groups.get(key, 0) + vec
    return groups, counts, smax


@pytest.mark.parametrize("seed,K,decimals", [(0, 1, None), (1, 3, None), (2, 5, 1), (3, 7, 0), (4, 18, 1)])
def test_batch_rows_is_the_plain_definition(seed, K, decimals):
    rng = np.random.default_rng(seed)
    V = rng.normal(size=(250, K))
    p = rng.normal(0, 0.3, K)
    if decimals is not None:                       # exact ties at every level
        V, p = np.round(V, decimals), np.round(p, decimals)
    deltas = delta_ladder(float(V.max() - V.min()))[::-1].copy()     # any order of the ladder
    want, counts, smax = plain(V, p, deltas)
    got = merge_rows(batch_rows(V[:100], p, deltas) + batch_rows(V[100:], p, deltas), K)   # two batches
    assert got.n == len(V) and np.array_equal(got.counts, counts)
    assert got.smax == pytest.approx(smax, rel=1e-12)
    assert set(got.groups) == set(want)
    for key, vec in want.items():
        np.testing.assert_allclose(got.groups[key], vec, rtol=1e-12, atol=1e-12)
    assert all(r[0] == GLOBAL or r[0] in range(len(deltas)) for r in batch_rows(V, p, deltas))


def test_empty_batch_has_only_the_global_row():
    rows = batch_rows(np.zeros((0, 4)), np.zeros(4), delta_ladder(1.0))
    assert len(rows) == 1 and rows[0][0] == GLOBAL and rows[0][2][0] == 0
