"""Which S treatments to offer: greedy, swap refinement, exact enumeration; the value-vs-S curve.

Without capacities the value of offering a set A is F(A) = sum_i max_{t in A} v_it (every user
takes their best offered treatment). F is monotone and submodular (a max of modular functions
summed over users), so greedy (add the treatment with the largest marginal gain, S times) is
within 1 - 1/e of the best set (Nemhauser, Wolsey and Fisher 1978). Swap refinement then
replaces one offered treatment by one not offered while that raises F (best improvement per
round; a local optimum in the one-swap neighbourhood). When C(|T|, S) is at most
``exact_limit`` every set is evaluated and the best is exact.

Each round evaluates many sets at once: ``set_values(sets)`` is one pass over the users (sums
per set add across partitions). Treatments with a positive ``min_share`` must be offered; they
are forced into every set. Full personalisation is F(T), the "share" of a set is F(A) / F(T)
(meaningful for positive values: incremental profit over a zero baseline).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

SetValues = Callable[[Sequence[Sequence[int]]], np.ndarray]


def numpy_set_values(V: np.ndarray) -> SetValues:
    """F for every set, in memory (V: users x treatments)."""
    V = np.asarray(V, dtype=np.float64)

    def f(sets):
        return np.array([float(V[:, list(s)].max(axis=1).sum()) for s in sets])
    return f


def spark_set_values(df, columns: list[str]) -> SetValues:
    """F for every set, one ``mapInArrow`` job per call (per-batch sums added on the driver)."""
    import pyarrow as pa

    K = len(columns)
    values = df.select(*columns)

    def f(sets):
        sets_ = [list(s) for s in sets]

        def fn(batches):
            for batch in batches:
                V = np.column_stack([batch.column(i).to_numpy(zero_copy_only=False).astype(np.float64)
                                     for i in range(K)]) if batch.num_rows else np.zeros((0, K))
                yield pa.RecordBatch.from_pydict(
                    {"j": list(range(len(sets_))),
                     "v": [float(V[:, s].max(axis=1).sum()) if len(V) else 0.0 for s in sets_]},
                    schema=pa.schema([("j", pa.int32()), ("v", pa.float64())]))

        out = np.zeros(len(sets_))
        for r in values.mapInArrow(fn, "j int, v double").collect():
            out[r["j"]] += r["v"]
        return out
    return f


@dataclass
class Choice:
    treatments: list[int]       # indices into T, sorted
    value: float                # F(treatments), no capacities
    method: str                 # "exact", "greedy+swap"
    passes: int


def _check(n_treatments: int, S: int, forced: Sequence[int], key: str) -> None:
    if S < 1:
        raise ValueError(f"{key}.max_treatments must be at least 1 (got {S})")
    if S > n_treatments:
        raise ValueError(f"{key}.max_treatments = {S} exceeds the number of candidate treatments "
                         f"({n_treatments})")
    if len(set(forced)) > S:
        raise ValueError(f"{key}.min_share: {len(set(forced))} treatments have a positive minimum share, "
                         f"so all must be offered, but {key}.max_treatments = {S}")


def choose(set_values: SetValues, n_treatments: int, S: int, forced: Sequence[int] = (),
           exact_limit: int = 200, key: str = "transport") -> Choice:
    """The best set of S treatments (forced ones included) for F."""
    _check(n_treatments, S, forced, key)
    forced = sorted(set(forced))
    free = [t for t in range(n_treatments) if t not in forced]
    k = S - len(forced)
    if math.comb(len(free), k) <= exact_limit:
        sets = [sorted(forced + list(c)) for c in itertools.combinations(free, k)]
        vals = set_values(sets)
        j = int(np.argmax(vals))
        return Choice(sets[j], float(vals[j]), "exact", 1)
    chosen, passes = list(forced), 0
    cur = float(set_values([chosen])[0]) if chosen else -math.inf
    passes += bool(chosen)
    for _ in range(k):                                   # greedy
        cands = [t for t in free if t not in chosen]
        vals = set_values([chosen + [t] for t in cands])
        passes += 1
        j = int(np.argmax(vals))
        chosen.append(cands[j])
        cur = float(vals[j])
    while True:                                          # best-improvement swaps
        swaps = [(a, b) for a in chosen if a not in forced for b in free if b not in chosen]
        if not swaps:
            break
        vals = set_values([[b if x == a else x for x in chosen] for a, b in swaps])
        passes += 1
        j = int(np.argmax(vals))
        if vals[j] <= cur + 1e-12 * max(1.0, abs(cur)):
            break
        a, b = swaps[j]
        chosen = [b if x == a else x for x in chosen]
        cur = float(vals[j])
    return Choice(sorted(chosen), cur, "greedy+swap", passes)


def value_curve(set_values: SetValues, n_treatments: int, max_S: int, forced: Sequence[int] = (),
                exact_limit: int = 200, key: str = "transport") -> tuple[list[dict], float]:
    """For S = max(1, #forced) .. max_S: the chosen set, F and F / F(T). Returns (rows, F(T))."""
    _check(n_treatments, max_S, forced, key)
    full = float(set_values([list(range(n_treatments))])[0])
    rows = []
    for S in range(max(1, len(set(forced))), max_S + 1):
        c = choose(set_values, n_treatments, S, forced, exact_limit, key)
        rows.append({"S": S, "treatments": c.treatments, "value": c.value,
                     "share_of_full": c.value / full if full != 0 else float("nan"), "method": c.method})
    return rows, full
