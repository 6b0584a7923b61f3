"""The dual assignment over a Spark DataFrame: one row per user, one value column per treatment.

Same algorithm as ``dual.solve_numpy`` (the driver code is shared: ``dual.solve_dual``); only the
pass over the users differs. Each round of price updates (the
several candidate price vectors of ``dual.dual_iterations``) is one ``mapInArrow`` job running
``kernel.batch_rows`` on every Arrow batch and a ``collect()`` of the per-batch rows (a few
rows per candidate-set group), summed on the driver: the driver holds the K prices and the
group sums, never a per-user array. Sums are over batches, so results agree with numpy up to
floating-point summation order.

The final assignment: a second ``mapInArrow`` computes every user's candidate set at the chosen
(prices, delta), first-choice treatment and seeded hash (``kernel.user_hash``, the same function
numpy uses); users in ambiguous groups are ranked within their group by (hash, id) with a window
function and given treatments by the group's quotas, so the capacities hold exactly and the
assignment is the one ``solve_numpy`` makes. Only DataFrame APIs are used (no SparkContext, RDD or
broadcast), so it runs over Spark Connect too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segmentation.errors import DataValidationError
from segmentation.transport.capacity import Capacities
from segmentation.transport.dual import DualResult, solve_dual
from segmentation.transport.kernel import PriceStats, batch_rows, merge_rows, surplus_masks, user_hash

ROW_SCHEMA = "level int, mask long, vec array<double>"
TREATMENT_COL = "treatment"
VALUE_COL = "value"


def check_value_columns(df, user_col: str, columns: list[str]) -> None:
    """Every value column present and numeric, the user column present; names what is wrong."""
    from pyspark.sql.types import NumericType

    fields = {f.name: f.dataType for f in df.schema.fields}
    missing = [c for c in [user_col, *columns] if c not in fields]
    if missing:
        raise DataValidationError(f"value table is missing column(s) {missing} (available: {sorted(fields)})")
    bad = [f"{c} ({fields[c].simpleString()})" for c in columns if not isinstance(fields[c], NumericType)]
    if bad:
        raise DataValidationError(f"value column(s) must be numeric: {bad}")


def count_bad_values(df, columns: list[str]) -> dict[str, int]:
    """Null or NaN count per value column (one aggregation)."""
    from pyspark.sql import functions as F

    row = df.agg(*[F.sum((F.col(c).isNull() | F.isnan(F.col(c))).cast("long")).alias(f"b{i}")
                   for i, c in enumerate(columns)]).collect()[0]
    return {c: int(row[f"b{i}"] or 0) for i, c in enumerate(columns) if (row[f"b{i}"] or 0) > 0}


def _values(batch, k: int) -> np.ndarray:
    return np.column_stack([batch.column(i).to_numpy(zero_copy_only=False).astype(np.float64)
                            for i in range(k)]) if batch.num_rows else np.zeros((0, k))


def spark_evaluator(df, columns: list[str], persist: bool = True):
    """``evaluate(p, deltas) -> PriceStats``: one Spark job per call; ``evaluate.many(points,
    deltas)`` evaluates several price vectors in one job (what ``solve_dual`` uses).

    With ``persist`` the value columns are persisted (Spark's default storage level) for the
    iterations; the caller unpersists ``evaluate.frame`` when done.
    """
    import pyarrow as pa

    K = len(columns)
    values = df.select(*columns)
    if persist:
        values = values.persist()

    schema = pa.schema([("point", pa.int32()), ("level", pa.int32()), ("mask", pa.int64()),
                        ("vec", pa.list_(pa.float64()))])

    def many(points, deltas) -> list[PriceStats]:
        """The PriceStats of every price vector of ``points``, in one job."""
        ps = [np.asarray(p, dtype=np.float64).copy() for p in points]
        d_ = np.asarray(deltas, dtype=np.float64).copy()

        def fn(batches):
            for batch in batches:
                V = _values(batch, K)
                rows = [(j, *r) for j, p_ in enumerate(ps) for r in batch_rows(V, p_, d_)]
                yield pa.RecordBatch.from_pydict(
                    {"point": [r[0] for r in rows], "level": [r[1] for r in rows], "mask": [r[2] for r in rows],
                     "vec": [r[3].tolist() for r in rows]}, schema=schema)

        rows = values.mapInArrow(fn, "point int, " + ROW_SCHEMA).collect()
        by = [[] for _ in ps]
        for r in rows:
            by[r["point"]].append((r["level"], r["mask"], r["vec"]))
        return [merge_rows(b, K) for b in by]

    def evaluate(p: np.ndarray, deltas: np.ndarray) -> PriceStats:
        return many([p], deltas)[0]

    evaluate.many = many
    evaluate.frame = values
    return evaluate


def value_range(df, columns: list[str]) -> tuple[int, float, float]:
    from pyspark.sql import functions as F

    lo = F.least(*[F.col(c) for c in columns]) if len(columns) > 1 else F.col(columns[0])
    hi = F.greatest(*[F.col(c) for c in columns]) if len(columns) > 1 else F.col(columns[0])
    r = df.agg(F.count(F.lit(1)).alias("n"), F.min(lo).alias("lo"), F.max(hi).alias("hi")).collect()[0]
    return int(r["n"]), float(r["lo"] if r["lo"] is not None else 0.0), float(r["hi"] if r["hi"] is not None else 0.0)


@dataclass
class SparkAssignment:
    assignment: object        # DataFrame: user_col, treatment, value
    value: float
    counts: np.ndarray
    result: DualResult

    @property
    def gap(self) -> float:
        return self.result.dual - self.value


def assignment_frame(df, user_col: str, columns: list[str], names: list[str], result: DualResult, seed: int):
    """DataFrame (user_col, treatment, value) of the plan in ``result`` (lazy)."""
    import pyarrow as pa
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    K = len(columns)
    plan = result.plan
    p_ = np.asarray(plan.prices, dtype=np.float64).copy()
    delta = float(plan.delta)

    def fn(batches):
        for batch in batches:
            V = _values(batch, K)
            W = V - p_[None, :]
            arg = np.argmax(W, axis=1) if len(V) else np.zeros(0, dtype=np.int64)
            b = W.max(axis=1) if len(V) else np.zeros(0)
            masks = surplus_masks(W, delta, b)
            ids = batch.column(K).to_numpy(zero_copy_only=False)
            h = user_hash(ids, seed) if len(V) else np.zeros(0, dtype=np.int64)
            yield pa.RecordBatch.from_pydict({"_mask": masks.astype(np.int64), "_arg": arg.astype(np.int32),
                                              "_h": h})

    tagged_schema = "_mask long, _arg int, _h long"
    src = df.select(*columns, user_col)
    # keep the user id and values next to the tags: run the kernel on the same rows
    import pyspark.sql.types as T

    out_schema = T.StructType(src.schema.fields + T.StructType.fromDDL(tagged_schema).fields)

    def fn_all(batches):
        for batch in batches:
            tags = next(fn(iter([batch])))
            yield pa.RecordBatch.from_arrays(list(batch.columns) + list(tags.columns),
                                             names=list(batch.schema.names) + list(tags.schema.names))

    tagged = src.mapInArrow(fn_all, out_schema)
    ambiguous = (F.col("_mask").bitwiseAND(F.col("_mask") - F.lit(1))) != 0
    choice = F.col("_arg")
    if plan.splits:
        rank = F.row_number().over(Window.partitionBy("_mask").orderBy("_h", user_col)) - 1
        tagged = tagged.withColumn("_rank", F.when(ambiguous, rank))
        for mask, quota in plan.splits.items():
            cum = np.cumsum(quota)
            pick = None
            for t in range(K - 1, -1, -1):
                if quota[t] > 0:
                    pick = F.lit(t) if pick is None else F.when(F.col("_rank") < int(cum[t]), F.lit(t)).otherwise(pick)
            choice = F.when(F.col("_mask") == F.lit(int(mask)), pick).otherwise(choice)
    tagged = tagged.withColumn("_t", choice)
    name = F.lit(None).cast("string")
    val = F.lit(None).cast("double")
    for t in range(K - 1, -1, -1):
        name = F.when(F.col("_t") == t, F.lit(names[t])).otherwise(name)
        val = F.when(F.col("_t") == t, F.col(columns[t]).cast("double")).otherwise(val)
    return tagged.select(F.col(user_col), name.alias(TREATMENT_COL), val.alias(VALUE_COL))


def solve_spark(df, user_col: str, columns: list[str], caps: Capacities, names: list[str] | None = None,
                seed: int = 0, tol: float = 1e-9, max_iter: int = 500) -> SparkAssignment:
    """Solve over ``df`` (one row per user); ``columns[t]`` holds v_it; ``names`` label the treatments.

    Returns the lazy assignment DataFrame and its exact value and head counts (one more job).
    """
    from pyspark.sql import functions as F

    names = list(names or columns)
    check_value_columns(df, user_col, columns)
    bad = count_bad_values(df, columns)
    if bad:
        raise DataValidationError(f"value column(s) hold nulls or NaN (count per column): {bad}")
    n, lo, hi = value_range(df, columns)
    if n != caps.n:
        raise ValueError(f"capacities were computed for {caps.n} users, the table has {n}")
    K = len(columns)
    evaluate = spark_evaluator(df, columns)
    try:
        res = solve_dual(evaluate, K, caps, hi - lo, tol=tol, max_iter=max_iter)
    finally:
        evaluate.frame.unpersist()
    out = assignment_frame(df, user_col, columns, names, res, seed)
    rows = out.groupBy(TREATMENT_COL).agg(F.count(F.lit(1)).alias("n"), F.sum(VALUE_COL).alias("v")).collect()
    by = {r[TREATMENT_COL]: r for r in rows}
    counts = np.array([int(by[t]["n"]) if t in by else 0 for t in names], dtype=np.int64)
    value = float(sum(float(r["v"]) for r in rows))
    return SparkAssignment(assignment=out, value=value, counts=counts, result=res)
