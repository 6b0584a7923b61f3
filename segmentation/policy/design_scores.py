"""Segment choice over the cached design (numpy; no Spark): the counts behind the segment shares
a fit reports, computed in the passes' blocks instead of re-reading the input through Spark.

A row's segment is ``argmax_j s_j`` over the assignable segments, with
``s_j = gamma_j0 + sum_k gamma_jk z_k`` (``z``: the standardised design row, intercept first)
and ties going to the first segment, as ``policy.assign.assign_segments`` decides in Spark. Spark
evaluates ``s_j`` left to right over the nonzero terms (``segment_score_expressions``); a BLAS
product sums in another order, so two near-equal scores could compare the other way. Here the
scores come from one matrix product, and every row whose best score is within the rounding
bound of another is scored again the way Spark does, term by term: the choice is Spark's on
every row, at the cost of a matrix product.

The bound: any two ways of summing the same ``m`` products (with or without fused
multiply-adds) differ by at most ``2 gamma_m sum_k |gamma_jk z_k|``, with
``gamma_m = m u / (1 - m u)`` and ``u = 2^-53`` (Higham, *Accuracy and Stability of Numerical
Algorithms*, 3.1). A row is rescored when for some ``j`` other than the product's best ``b``,
``s_b - s_j <= 2 (gamma_m + u) (T_b + T_j)`` with ``T_j = sum_k |gamma_jk z_k|`` (computed as
``|z| |gamma_j|``, itself within a factor ``1 + gamma_m`` of the exact sum, covered by the
extra ``u``) and doubled for safety.
"""
from __future__ import annotations

import numpy as np

CHUNK_BYTES = 8 << 20          # rows scored at a time: about this many bytes of design


def sequential_scores(Z: np.ndarray, G: np.ndarray) -> np.ndarray:
    """(n, J) scores as Spark's expressions compute them: for each segment j, ``G[j, 0]`` then
    ``+ G[j, k] * Z[:, k]`` for each nonzero ``G[j, k]``, k = 1, 2, ... in order."""
    n = Z.shape[0]
    S = np.empty((n, G.shape[0]))
    for j in range(G.shape[0]):
        s = np.full(n, float(G[j, 0]))
        for k in np.flatnonzero(G[j, 1:]) + 1:
            s = s + float(G[j, k]) * Z[:, k]
        S[:, j] = s
    return S


def _product(Z: np.ndarray, G: np.ndarray) -> np.ndarray:
    """The scores by one matrix product (any summation order BLAS likes)."""
    return Z @ G.T


def choose_segments(Z: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Index (into the rows of ``G``) of each row's segment: the first maximum of
    :func:`sequential_scores`, computed by a matrix product plus the rescoring of the rows the
    rounding bound leaves undecided (module docstring)."""
    Z = np.asarray(Z, dtype=np.float64)
    G = np.asarray(G, dtype=np.float64)
    n, J = Z.shape[0], G.shape[0]
    if J == 1 or n == 0:
        return np.zeros(n, dtype=np.int64)
    S = _product(Z, G)
    best = np.argmax(S, axis=1)
    rows = np.arange(n)
    T = np.abs(Z) @ np.abs(G).T
    m = int(np.count_nonzero(G, axis=1).max()) + 1
    u = 2.0 ** -53
    slack = 4.0 * (m * u / (1.0 - m * u) + u)
    gap = S[rows, best][:, None] - S
    near = gap <= slack * (T[rows, best][:, None] + T)
    near[rows, best] = False
    undecided = np.flatnonzero(near.any(axis=1) | ~np.isfinite(S).all(axis=1))
    if len(undecided):
        best[undecided] = np.argmax(sequential_scores(Z[undecided], G), axis=1)
    return best


def segment_counts(block, *, G: np.ndarray) -> np.ndarray:
    """Rows of a ``DesignBlock`` per row of ``G`` (float64, for summing over blocks), scored in
    row chunks of about ``CHUNK_BYTES``."""
    X = block.X
    n, p = X.shape
    step = max(1, CHUNK_BYTES // (8 * max(p, 1)))
    counts = np.zeros(G.shape[0])
    for a in range(0, n, step):
        counts += np.bincount(choose_segments(np.asarray(X[a:a + step]), G), minlength=G.shape[0])
    return counts
