"""The allocation plan: which S treatments to offer, who gets which, and the value-vs-S curve.

``plan_allocation(df, user_col, columns, names, cfg)`` is the one entry point the workflow calls.
``df`` holds one row per user and one value column per candidate treatment (``columns[t]`` holds
v_it for the treatment labelled ``names[t]``); ``cfg`` is the ``transport`` config section.

Steps: check the value columns (one job: nulls/NaN, user count, value range); collect a
driver-side sample of ``transport.sample_size`` users by seeded hash of the id (one job; every
dual solve is first solved on it in memory, and its solve on all users, which certifies the gap,
starts from those prices; with ``transport.search_on_sample`` the whole search first runs on it
too, and the searches over all users start from its sets: ``decide``); for every S from 1 to ``max_treatments`` search the offered set under
the capacity limits (``transport.search``: exact enumeration, or greedy + Lloyd alternation +
swaps), all searches advancing together so each
Spark job is one pass over the users serving every open question; the plan is the best set
found (more treatments never hurt when they can be left empty, so normally S = max_treatments);
its assignment is the dual's prices plus the hash-split of tied users (``spark.assignment_frame``),
and one more job counts it and sums its value. ``full_value`` is F(T): every user their best
treatment, no limits. The curve reports, for each S, the best value found as a share of it.

Everything per user stays in Spark; the driver holds prices and per-group sums: O(|T|) numbers per
dual solve in flight (times the tie groups), and the fixed-size sample (sample_size x |T|
numbers, whatever the number of users), never an array over all users.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segmentation.errors import DataValidationError
from segmentation.transport.capacity import capacities
from segmentation.transport.passes import numpy_runner, numpy_sample, spark_runner, spark_sample
from segmentation.transport.search import Limits, Sets, run_searches, search
from segmentation.transport.spark import TREATMENT_COL, VALUE_COL, assignment_frame, check_value_columns

SWAP_CANDIDATES = 4      # sets solved under capacities per batch: swap neighbours (ranked by F), exact batches
MAX_ROUNDS = 50          # Lloyd/swap rounds per S


@dataclass
class AllocationPlan:
    """What ``plan_allocation`` decided, and the evidence for it.

    ``curve`` rows: ``{"S", "value", "share_of_full", "offered"}``: the best value found with at
    most S treatments (under the capacity limits) as a share of ``full_value``, the value of full
    personalisation (every user their best of all treatments, no limits).
    """

    offered: list[str]
    prices: dict[str, float]
    shares: dict[str, float]
    min_share: dict[str, float]
    max_share: dict[str, float]
    total_value: float
    mean_value: float
    duality_gap: float
    curve: list[dict]
    full_value: float
    method: dict
    spark_jobs: int | None
    n_users: int
    assignment: Any = field(repr=False)          # DataFrame: user_col, treatment, value

    def to_json(self) -> dict:
        """A JSON-safe dict of everything but the assignment DataFrame."""
        def clean(x):
            if isinstance(x, dict):
                return {str(k): clean(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            if isinstance(x, (np.integer,)):
                return int(x)
            if isinstance(x, (np.floating, float)):
                x = float(x)
                return x if math.isfinite(x) else None
            return x

        return clean({
            "offered": self.offered, "prices": self.prices, "shares": self.shares,
            "min_share": self.min_share, "max_share": self.max_share, "n_users": self.n_users,
            "total_value": self.total_value, "mean_value": self.mean_value,
            "duality_gap": self.duality_gap, "full_value": self.full_value,
            "share_of_full": self.total_value / self.full_value if self.full_value else None,
            "curve": self.curve, "method": self.method, "spark_jobs": self.spark_jobs,
            "columns": {"treatment": TREATMENT_COL, "value": VALUE_COL},
        })


def _check_names(names: list[str], cfg) -> list[int]:
    """Forced treatments (positive min_share) as indices; unknown names in the limits rejected."""
    if len(set(names)) != len(names):
        raise DataValidationError(f"treatment names repeat: {names}")
    for key in ("min_share", "max_share"):
        unknown = sorted(set(getattr(cfg, key)) - set(names))
        if unknown:
            raise DataValidationError(f"transport.{key}: unknown treatment(s) {unknown} (treatments: {names})")
    if cfg.max_treatments > len(names):
        raise DataValidationError(f"transport.max_treatments = {cfg.max_treatments} exceeds the number of "
                                  f"treatments ({len(names)})")
    return [names.index(t) for t, s in cfg.min_share.items() if float(s) > 0]


@dataclass
class Decision:
    """What the search decided (no per-user data)."""

    best: object                 # search.SearchResult of the plan
    results: list                # per S
    full_value: float
    passes: int
    names: list
    sample_users: int | None = None
    sample_search: dict | None = None      # what the search on the sample found (``sample_starts``)


def sample_starts(sample: np.ndarray, scale: float, names: list[str], cfg, swap_candidates: int | None,
                  max_rounds: int) -> tuple[dict, dict]:
    """The whole search run in memory on the driver-side sample (limits rescaled to its users):
    ({S: the sample's best set}, a summary for ``method``). Empty if the limits cannot be met on
    the sample (its head counts round differently) or a dual solve finds no feasible split there
    (``RuntimeError``, as in ``search.sample_prices``), in which case the search starts from greedy."""
    try:
        d = decide(numpy_runner(sample), len(sample), scale, names, cfg, swap_candidates, max_rounds)
    except (DataValidationError, RuntimeError) as e:
        return {}, {"users": len(sample), "skipped": str(e)}
    starts = {r.S: tuple(r.offered) for r in d.results if r.offered is not None}
    return starts, {"users": len(sample), "passes_in_memory": d.passes,
                    "sets": {str(S): [names[t] for t in A] for S, A in starts.items()}}


def decide(run, n: int, scale: float, names: list[str], cfg, swap_candidates: int | None = SWAP_CANDIDATES,
           max_rounds: int = MAX_ROUNDS) -> Decision:
    """Run the searches for S = 1..max_treatments and the full-personalisation value on ``run``.

    With ``cfg.search_on_sample`` and a driver-side sample smaller than the users (``run.sample``),
    the searches first run in memory on the sample; the searches over all users then start from
    the sample's sets (enumeration: solved first; otherwise instead of greedy) and refine them by
    Lloyd + swap rounds on all users, so the plan is still checked against its neighbours on every
    user and its gap certified there; only the dependent chain of the search is shortened.
    """
    forced = _check_names(names, cfg)
    sample = getattr(run, "sample", None)
    starts, summary = {}, None
    if getattr(cfg, "search_on_sample", False) and sample is not None and 0 < len(sample) < n:
        starts, summary = sample_starts(sample, scale, names, cfg, swap_candidates, max_rounds)
    try:
        caps = capacities(list(names), n, cfg.min_share, cfg.max_share)     # per-treatment head counts
    except ValueError as e:
        raise DataValidationError(str(e)) from None
    limits = Limits(n, caps.lower, caps.upper, forced)
    if len(forced) > cfg.max_treatments:
        raise DataValidationError(f"transport.min_share: {len(forced)} treatments have a positive minimum "
                                  f"share and must all be offered, but transport.max_treatments = "
                                  f"{cfg.max_treatments}")

    def full():
        return (yield [Sets([tuple(range(len(names)))])])[0][0]

    rel_tol = max(10.0 * cfg.tol, 1e-12)
    gens = [search(S, len(names), limits, cfg.exact_limit, swap_candidates, max_rounds, rel_tol,
                   start=starts.get(S)) for S in range(1, cfg.max_treatments + 1)] + [full()]
    out, passes = run_searches(gens, run, scale, cfg.tol)
    results, full_value = out[:-1], float(out[-1])
    feasible = [r for r in results if r.offered is not None]
    if not feasible:
        raise DataValidationError(
            f"transport.max_share: no set of at most {cfg.max_treatments} treatments can take all {n} users "
            f"(the largest upper limits, rounded down to head counts, sum to less than {n})")
    top = max(r.value for r in feasible)
    best = next(r for r in feasible if r.value >= top - 10 * rel_tol * max(abs(top), 1e-300))
    return Decision(best=best, results=results, full_value=full_value, passes=passes, names=list(names),
                    sample_users=None if sample is None else len(sample), sample_search=summary)


def _curve(d: Decision) -> list[dict]:
    rows = []
    for r in d.results:
        ok = r.offered is not None
        rows.append({"S": r.S, "value": r.value if ok else None,
                     "share_of_full": (r.value / d.full_value if ok and d.full_value else None),
                     "offered": [d.names[t] for t in r.offered] if ok else None,
                     "search": r.method.get("initial")})
    return rows


def _method(d: Decision, final_passes: int) -> dict:
    m = dict(d.best.method)
    m.update(passes=d.passes + final_passes, price_updates=d.best.result.iterations,
             capacity_aware=True, sample_users=d.sample_users, sample_search=d.sample_search,
             per_S=[r.method for r in d.results])
    return m


def plan_allocation(df, user_col: str, columns: list[str], names: list[str], cfg,
                    swap_candidates: int | None = SWAP_CANDIDATES, max_rounds: int = MAX_ROUNDS,
                    persist: bool = True) -> AllocationPlan:
    """Choose at most ``cfg.max_treatments`` treatments and assign every user of ``df``.

    ``df``: one row per user, ``columns[t]`` numeric (v_it for treatment ``names[t]``). Spark jobs:
    one check, one per pass of the search, one to count the assignment (which stays lazy).
    """
    from pyspark.sql import functions as F

    from segmentation.selection.jobs import count_jobs

    if len(columns) != len(names):
        raise ValueError(f"{len(columns)} value columns but {len(names)} treatment names")
    _check_names(names, cfg)
    check_value_columns(df, user_col, columns)
    with count_jobs(df.sparkSession, "transport") as jc:
        n, lo, hi, bad = _scan(df, columns)
        if bad:
            raise DataValidationError(f"value column(s) hold nulls or NaN (count per column): {bad}")
        if n == 0:
            raise DataValidationError("the value table has no rows")
        run = spark_runner(df, columns, persist=persist)
        try:
            if cfg.sample_size > 0:
                run.sample = spark_sample(df, user_col, columns, n, cfg.seed, cfg.sample_size)
            d = decide(run, n, hi - lo, names, cfg, swap_candidates, max_rounds)
        finally:
            if persist:
                run.frame.unpersist()
        offered = [names[t] for t in d.best.offered]
        r = d.best.result
        out = assignment_frame(df, user_col, [columns[t] for t in d.best.offered], offered, r, cfg.seed)
        rows = out.groupBy(TREATMENT_COL).agg(F.count(F.lit(1)).alias("n"), F.sum(VALUE_COL).alias("v")).collect()
    by = {row[TREATMENT_COL]: row for row in rows}
    counts = np.array([int(by[t]["n"]) if t in by else 0 for t in offered], dtype=np.int64)
    value = float(sum(float(row["v"]) for row in rows))
    return _plan(d, r, offered, counts, value, n, cfg, jc.jobs, out, final_passes=1)


def _plan(d: Decision, r, offered, counts, value, n, cfg, jobs, assignment, final_passes) -> AllocationPlan:
    curve = _curve(d)
    for row in curve:
        if row["S"] == d.best.S:
            row["assignment_value"] = value
    return AllocationPlan(
        offered=offered,
        prices={t: float(p) for t, p in zip(offered, r.prices)},
        shares={t: float(c) / n for t, c in zip(offered, counts)},
        min_share={t: float(cfg.min_share.get(t, 0.0)) for t in offered},
        max_share={t: float(cfg.max_share.get(t, 1.0)) for t in offered},
        total_value=value, mean_value=value / n, duality_gap=float(r.dual - value),
        curve=curve, full_value=d.full_value, method=_method(d, final_passes),
        spark_jobs=jobs, n_users=n, assignment=assignment)


def _scan(df, columns):
    """(n, min, max, {column: null or NaN count}) in one aggregation."""
    from pyspark.sql import functions as F

    bad = [F.sum((F.col(c).isNull() | F.isnan(F.col(c))).cast("long")).alias(f"b{i}") for i, c in enumerate(columns)]
    lo = F.least(*[F.col(c) for c in columns]) if len(columns) > 1 else F.col(columns[0])
    hi = F.greatest(*[F.col(c) for c in columns]) if len(columns) > 1 else F.col(columns[0])
    row = df.agg(F.count(F.lit(1)).alias("n"), F.min(lo).alias("lo"), F.max(hi).alias("hi"), *bad).collect()[0]
    counts = {c: int(row[f"b{i}"] or 0) for i, c in enumerate(columns) if (row[f"b{i}"] or 0) > 0}
    return (int(row["n"]), float(row["lo"] if row["lo"] is not None else 0.0),
            float(row["hi"] if row["hi"] is not None else 0.0), counts)


def plan_numpy(V: np.ndarray, names: list[str], cfg, ids=None, batch_size: int | None = None,
               swap_candidates: int | None = SWAP_CANDIDATES, max_rounds: int = MAX_ROUNDS) -> AllocationPlan:
    """The same plan in memory (V: users x treatments); ``assignment`` is a numpy array of
    treatment indices into ``names``. For tests and small problems."""
    from segmentation.transport.dual import hash_ranks
    from segmentation.transport.kernel import assign_rows, candidate_masks

    V = np.asarray(V, dtype=np.float64)
    n = len(V)
    if not np.all(np.isfinite(V)):
        raise DataValidationError("values hold NaN or infinite entries")
    ids = np.arange(n) if ids is None else np.asarray(ids)
    sample = numpy_sample(V, ids, cfg.seed, cfg.sample_size) if cfg.sample_size > 0 else None
    run = numpy_runner(V, batch_size, sample=sample)
    d = decide(run, n, float(V.max() - V.min()), names, cfg, swap_candidates, max_rounds)
    cols = list(d.best.offered)
    r = d.best.result
    Vs = V[:, cols]
    masks = candidate_masks(Vs, r.plan.prices, r.plan.delta)
    rank = hash_ranks(ids, cfg.seed, masks) if r.plan.splits else None
    t = assign_rows(Vs, r.plan.prices, r.plan.delta, r.plan.splits, rank)
    value = float(Vs[np.arange(n), t].sum())
    counts = np.bincount(t, minlength=len(cols))
    return _plan(d, r, [names[c] for c in cols], counts, value, n, cfg, None, np.asarray(cols)[t], final_passes=0)
