"""The per-user work of one price update, as sums that add across partitions (pure numpy).

At prices p, user i's surplus for treatment t is w_it = v_it - p_t; b_i = max_t w_it is what the
user would pay nothing more for. One pass returns

- ``n`` and ``smax = sum_i b_i`` (the user part of the dual objective, see ``dual``);
- ``counts[t] = #{i : t = first argmax_t w_it}``: with the capacity terms, a subgradient of the dual;
- for every tolerance delta of a ladder, the users grouped by their candidate set
  A_i(delta) = {t : w_it >= b_i - delta} (a bit mask): per group its size m_g and the value sums
  sum_{i in g} v_it for every t. A user whose set is a single treatment is fixed; the groups of
  users within delta of indifference are what the driver splits to meet the capacities exactly.

Every quantity is a sum over users, so per-partition results simply add (``merge_rows``). A row
is ``(level, mask, vector)``: level -1 carries ``[n, smax, counts...]``; level l >= 0, mask g
carries ``[m_g, sum_i v_i0, ..., sum_i v_i(K-1)]`` (zeros outside the mask for singletons).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

GLOBAL = -1


@dataclass
class PriceStats:
    """The merged sums of one pass at one price vector."""

    K: int
    n: int = 0
    smax: float = 0.0
    counts: np.ndarray = None
    groups: dict = field(default_factory=dict)   # (level, mask) -> [m, vsum_0..vsum_{K-1}]

    def __post_init__(self):
        if self.counts is None:
            self.counts = np.zeros(self.K, dtype=np.int64)


def batch_rows(V: np.ndarray, p: np.ndarray, deltas: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    """The rows (level, mask, vector) for one batch of users; V is n x K float64.

    A user is fixed at level l when its gap (best minus second-best surplus) exceeds deltas[l].
    The tolerance sets are nested, so the fixed sums of every level come from one joint bincount
    over (band, first choice), where a user's band is the number of ladder tolerances below its
    gap, summed over the bands above the level. Only the users ambiguous at the largest tolerance
    are looked at again, level by level, for their candidate sets (grouped by a bincount over the
    2^K masks when K <= 16, by ``np.unique`` beyond).
    """
    n, K = V.shape
    W = V - p[None, :]
    arg = np.argmax(W, axis=1)
    idx = np.arange(n)
    b = W[idx, arg]
    rows = [(GLOBAL, 0, np.concatenate([[float(n), float(b.sum())],
                                        np.bincount(arg, minlength=K).astype(np.float64)]))]
    if n == 0:
        return rows
    deltas = np.asarray(deltas, dtype=np.float64)
    L = len(deltas)
    if K > 1:
        W2 = W.copy()
        W2[idx, arg] = -np.inf
        gap = b - W2.max(axis=1)
    else:
        gap = np.full(n, np.inf)
    own = V[idx, arg]
    bits = np.left_shift(np.int64(1), np.arange(K, dtype=np.int64))
    ds = np.sort(deltas)
    band = np.searchsorted(ds, gap, side="left")          # fixed at the sorted levels < band
    key = band * K + arg
    cnt_band = np.bincount(key, minlength=(L + 1) * K).reshape(L + 1, K)
    vs_band = np.bincount(key, weights=own, minlength=(L + 1) * K).reshape(L + 1, K)
    cnt_above = np.cumsum(cnt_band[::-1], axis=0)[::-1]      # [c] = users with band >= c
    vs_above = np.cumsum(vs_band[::-1], axis=0)[::-1]
    rank_of = np.searchsorted(ds, deltas, side="left")       # level -> its sorted position
    amb_all = np.flatnonzero(band < L)                       # ambiguous at the largest tolerance
    Va_all, Wa_all, ba_all, band_a = V[amb_all], W[amb_all], b[amb_all], band[amb_all]
    small = K <= 16
    for level, delta in enumerate(deltas):
        r = int(rank_of[level])
        cnt, vs = cnt_above[r + 1], vs_above[r + 1]
        for t in np.flatnonzero(cnt):
            vec = np.zeros(K + 1)
            vec[0] = cnt[t]
            vec[1 + t] = vs[t]
            rows.append((level, int(bits[t]), vec))
        sel = band_a <= r
        if not sel.any():
            continue
        Va, Wa, ba = Va_all[sel], Wa_all[sel], ba_all[sel]
        masks = surplus_masks(Wa, delta, ba)
        if small:
            mc = np.bincount(masks, minlength=1 << K)
            uniq = np.flatnonzero(mc)
            lookup = np.zeros(1 << K, dtype=np.int64)
            lookup[uniq] = np.arange(len(uniq))
            inv = lookup[masks]
            m = mc[uniq].astype(np.float64)
        else:
            uniq, inv = np.unique(masks, return_inverse=True)
            m = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
        G = len(uniq)
        sums = np.bincount((inv[:, None] * K + np.arange(K)[None, :]).ravel(), weights=Va.ravel(),
                           minlength=G * K).reshape(G, K)
        for g, mask in enumerate(uniq):
            rows.append((level, int(mask), np.concatenate([[m[g]], sums[g]])))
    return rows


def merge_rows(rows, K: int) -> PriceStats:
    """Add rows from any number of batches/partitions into one PriceStats."""
    st = PriceStats(K=K)
    counts = np.zeros(K)
    for level, mask, vec in rows:
        vec = np.asarray(vec, dtype=np.float64)
        if level == GLOBAL:
            st.n += int(vec[0])
            st.smax += float(vec[1])
            counts += vec[2:]
        else:
            key = (int(level), int(mask))
            if key in st.groups:
                st.groups[key] = st.groups[key] + vec
            else:
                st.groups[key] = vec.copy()
    st.counts = np.rint(counts).astype(np.int64)
    return st


def user_hash(ids, seed: int) -> np.ndarray:
    """A seeded 63-bit hash of user ids (non-negative int64, same order as a Spark ``long``).

    SipHash (``pandas.util.hash_array``) of the id's text keyed by the seed, shifted right by one
    so that signed and unsigned order agree.
    """
    key = f"{int(seed) & 0xFFFFFFFFFFFFFFFF:016x}"[-16:]
    arr = np.asarray(ids)
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.int64)          # ints hash by their decimal text, as in Spark batches
    h = pd.util.hash_array(arr.astype(str).astype(object), hash_key=key, categorize=False)
    return (h >> np.uint64(1)).astype(np.int64)


def assign_rows(V: np.ndarray, p: np.ndarray, delta: float, splits: dict[int, np.ndarray],
                rank: np.ndarray | None) -> np.ndarray:
    """Treatment index per user for the final plan.

    A user whose candidate set at (p, delta) is one treatment takes it. A user in an ambiguous
    group g takes the treatment whose cumulative quota ``splits[g]`` (head counts per treatment
    of the mask, in treatment order) first exceeds the user's ``rank`` within g (0-based, by
    seeded hash then id). ``rank`` may be None when no user is ambiguous.
    """
    n, K = V.shape
    W = V - p[None, :]
    arg = np.argmax(W, axis=1)
    masks = surplus_masks(W, delta, W[np.arange(n), arg])
    out = arg.copy()
    amb = (masks & (masks - 1)) != 0
    for g in np.unique(masks[amb]):
        sel = np.flatnonzero(masks == g)
        cum = np.cumsum(splits[int(g)])
        out[sel] = np.searchsorted(cum, rank[sel], side="right")
    return out


def surplus_masks(W: np.ndarray, delta: float, b: np.ndarray | None = None) -> np.ndarray:
    """The candidate-set bit mask sum_t 2^t [w_it >= b_i - delta] of every row of the surpluses
    W (b_i = max_t w_it unless given): the one definition every pass, the final assignment in
    numpy and in Spark, and the Lloyd sums use (int64; (bool * bits).sum, not a bool @ int64
    matmul, which is several times slower)."""
    if b is None:
        b = W.max(axis=1) if len(W) else np.zeros(0)
    bits = np.left_shift(np.int64(1), np.arange(W.shape[1], dtype=np.int64))
    return ((W >= (b - delta)[:, None]) * bits).sum(axis=1)


def candidate_masks(V: np.ndarray, p: np.ndarray, delta: float) -> np.ndarray:
    """The candidate-set bit mask of every user at (p, delta)."""
    return surplus_masks(V - p[None, :], delta)
