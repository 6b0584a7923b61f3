"""The Spark side of the evaluation: per-row terms where the rows live, aggregated per user then
overall, in a few jobs. Driver memory never depends on the number of rows.

Jobs (each one ``collect`` of O(partitions x d^2) numbers at most):

1. ``propensity_stats``: when ``data.propensity_col`` is given, one aggregation checks it lies in
   (0, 1] with no nulls and sums 1/p and 1/p^2 per creative (the design check).
2. ``training_sums``: for the K-means and best-single baselines, per fold model f the sums of
   y/p and 1/p over its training rows (folds != f) by (cluster under f's centres, creative):
   a ``mapInPandas`` emitting one row of (F, C, K) arrays per partition.
3. ``term_moments``: a ``mapInPandas`` computing ``policies.row_terms`` on Arrow batches (the
   small fold-model arrays travel in the closure), ``groupBy(user).sum`` (rows of a user are
   correlated: the variance is clustered by user), then a ``mapInPandas`` over the per-user
   totals emitting (U, sum v, sum v v') per partition; the driver adds them up.

Uses DataFrame APIs only (works under Spark Connect); K-means uses pyspark.ml.
"""
from __future__ import annotations

import numpy as np

from segmentation.data.encode import Encoding, col_ref
from segmentation.errors import DataValidationError
from segmentation.evaluation.estimators import Moments

CREATIVE_IDX = "_eval_creative"
FOLD = "_eval_fold"
RESPONSE = "_eval_y"
PROPENSITY = "_eval_p"
POLICY_PREFIX = "_eval_policy_"


def _map_in_pandas(frame, fn, schema: str):
    """``frame.mapInPandas(fn, schema)`` for any column names. PySpark 4.3 builds the call from
    ``frame[name]`` for every column, which reads a name with a dot ("user.id") as a struct
    field and fails; so the columns travel under positional names and ``fn`` sees the originals."""
    names = list(frame.columns)
    safe = frame.toDF(*[f"_c{i}" for i in range(len(names))])

    def renamed(batches):
        return fn(pdf.set_axis(names, axis=1) for pdf in batches)

    return safe.mapInPandas(renamed, schema)


def eval_frame(df, *, user_col: str, creative_col: str, response_col: str, creatives: list[str],
               encoding: Encoding, n_folds: int, seed: int, propensity_col: str | None = None):
    """The columns the evaluation needs: user, creative index, response (double), fold (the
    same hashed user folds as ``pipeline.prepare``), propensity (optional) and covariates."""
    from pyspark.sql import functions as F

    from segmentation.data.blockstore import add_creative_index
    from segmentation.data.folds import fold_expression

    df = add_creative_index(df, creative_col, list(creatives), index_col=CREATIVE_IDX)
    cols = [col_ref(user_col).alias(user_col), F.col(CREATIVE_IDX).cast("int").alias(CREATIVE_IDX),
            col_ref(response_col).cast("double").alias(RESPONSE),
            fold_expression(user_col, n_folds, seed).alias(FOLD)]
    if propensity_col:
        cols.append(col_ref(propensity_col).cast("double").alias(PROPENSITY))
    cols += [col_ref(c) for c in (*encoding.numeric, *encoding.categorical)
             if c not in (user_col, response_col, creative_col)]
    return df.select(*cols)


def propensity_stats(df, propensity_col: str, creative_col: str, creatives: list[str]) -> dict:
    """Validate ``propensity_col`` (exists, numeric, no nulls, in (0, 1]) and return per-creative
    sums of 1/p and 1/p^2 for the design check. Raises DataValidationError naming the column."""
    from pyspark.sql import functions as F

    from segmentation.data.encode import numeric_type_names

    fields = {f.name: f.dataType for f in df.schema.fields}
    if propensity_col not in fields:
        raise DataValidationError(
            f"config key 'data.propensity_col': column {propensity_col!r} not found in the data "
            f"(available: {sorted(fields)})")
    if not isinstance(fields[propensity_col], numeric_type_names()):
        raise DataValidationError(
            f"data.propensity_col {propensity_col!r} is not numeric "
            f"(type {fields[propensity_col].simpleString()})")
    p = col_ref(propensity_col).cast("double")
    bad = p.isNull() | F.isnan(p) | (p <= 0) | (p > 1)
    row = df.agg(F.count(F.lit(1)).alias("n"), F.sum(bad.cast("long")).alias("bad"),
                 F.min(p).alias("lo"), F.max(p).alias("hi")).collect()[0]
    if row["bad"]:
        raise DataValidationError(
            f"data.propensity_col {propensity_col!r}: {row['bad']:,} of {row['n']:,} rows are null, "
            f"NaN or outside (0, 1] (min {row['lo']}, max {row['hi']}); a propensity is the "
            "probability with which the logged creative was shown")
    sums = {r[creative_col]: (r["s1"], r["s2"]) for r in
            df.groupBy(col_ref(creative_col).alias(creative_col))
              .agg(F.sum(1.0 / p).alias("s1"), F.sum(1.0 / (p * p)).alias("s2")).collect()}
    s1 = np.array([float(sums.get(c, (0.0, 0.0))[0] or 0.0) for c in creatives])
    s2 = np.array([float(sums.get(c, (0.0, 0.0))[1] or 0.0) for c in creatives])
    return {"n_rows": int(row["n"]), "min": float(row["lo"]), "max": float(row["hi"]),
            "inv_p_sum": s1, "inv_p2_sum": s2}


def _batch_arrays(pdf, encoding: Encoding, shares):
    z = encoding.transform_numpy(pdf)
    a = pdf[CREATIVE_IDX].to_numpy(dtype=np.int64)
    y = pdf[RESPONSE].to_numpy(dtype=np.float64)
    fold = pdf[FOLD].to_numpy(dtype=np.int64)
    p = pdf[PROPENSITY].to_numpy(dtype=np.float64) if PROPENSITY in pdf else np.asarray(shares)[a]
    return z, a, y, fold, p


def training_sums(frame, *, encoding: Encoding, shares, n_folds: int, n_creatives: int,
                  centers: np.ndarray | None, affine) -> tuple[np.ndarray, np.ndarray]:
    """(num, den), each (F, C, K): sums of y/p and 1/p over fold model f's training rows
    (fold != f) by (cluster under f's K-means centres, creative). C = 1 without centres."""
    enc_dict = encoding.to_dict()
    F_, K = int(n_folds), int(n_creatives)
    C = 1 if centers is None else centers.shape[1]
    schema = "num array<double>, den array<double>"

    def run(batches):
        import pandas as pd

        enc = Encoding.from_dict(enc_dict)
        num = np.zeros((F_, C, K))
        den = np.zeros((F_, C, K))
        seen = False
        for pdf in batches:
            if not len(pdf):
                continue
            seen = True
            z, a, y, fold, p = _batch_arrays(pdf, enc, shares)
            for f in range(F_):
                tr = fold != f
                if not tr.any():
                    continue
                if centers is None:
                    cl = np.zeros(int(tr.sum()), dtype=np.int64)
                else:
                    zs = z[tr, 1:] * affine[0] + affine[1]
                    Cf = centers[f]
                    d2 = (zs**2).sum(1)[:, None] - 2.0 * zs @ Cf.T + (Cf**2).sum(1)[None, :]
                    cl = np.argmin(d2, axis=1)
                cell = cl * K + a[tr]
                num[f] += np.bincount(cell, weights=y[tr] / p[tr], minlength=C * K).reshape(C, K)
                den[f] += np.bincount(cell, weights=1.0 / p[tr], minlength=C * K).reshape(C, K)
        if seen:
            yield pd.DataFrame({"num": [num.ravel().tolist()], "den": [den.ravel().tolist()]})

    num = np.zeros((F_, C, K))
    den = np.zeros((F_, C, K))
    for r in _map_in_pandas(frame, run, schema).collect():
        num += np.asarray(r["num"]).reshape(F_, C, K)
        den += np.asarray(r["den"]).reshape(F_, C, K)
    return num, den


def with_user_policies(frame, user_col: str, policies: dict):
    """``frame`` with one int column ``_eval_policy_<name>`` per extra policy: the creative index
    each user gets (``policies[name]`` is a DataFrame of ``user_col`` and ``creative_index``, one
    row per user). Every row of ``frame`` must be covered: unassigned users raise
    DataValidationError with their count (one aggregation)."""
    from pyspark.sql import functions as F

    cols = []
    for name, df in policies.items():
        col = POLICY_PREFIX + name
        frame = frame.join(df.select(col_ref(user_col).alias(user_col),
                                     F.col("creative_index").cast("int").alias(col)), on=user_col, how="left")
        cols.append(col)
    if cols:
        row = frame.agg(*[F.sum(F.col(f"`{c}`").isNull().cast("long")).alias(f"m{i}")
                          for i, c in enumerate(cols)]).collect()[0]
        bad = {name: int(row[f"m{i}"]) for i, name in enumerate(policies) if row[f"m{i}"]}
        if bad:
            raise DataValidationError(f"policies to evaluate leave exposure rows without a creative "
                                      f"(rows per policy): {bad}")
    return frame


def term_moments(frame, *, user_col: str, encoding: Encoding, shares, fold_models,
                 extra_policies: tuple = ()) -> Moments:
    """Moments (U, sum v_u, sum v_u v_u') of the per-user totals of ``policies.row_terms``
    (``extra_policies``: names of ``with_user_policies`` columns, evaluated too)."""
    from pyspark.sql import functions as F

    from segmentation.evaluation.policies import row_terms, term_names

    extra_policies = tuple(extra_policies)
    names = term_names(fold_models, extra_policies)
    d = len(names)
    tcols = [f"t{i}" for i in range(d)]
    user_type = frame.schema[user_col].dataType.simpleString()
    row_schema = f"`{user_col}` {user_type}, " + ", ".join(f"{c} double" for c in tcols)
    enc_dict = encoding.to_dict()
    fm = fold_models

    def per_row(batches):
        import pandas as pd

        enc = Encoding.from_dict(enc_dict)
        for pdf in batches:
            if not len(pdf):
                continue
            z, a, y, fold, p = _batch_arrays(pdf, enc, shares)
            extra = {P: pdf[POLICY_PREFIX + P].to_numpy(dtype=np.int64) for P in extra_policies}
            T, _ = row_terms(z, y, a, p, fold, fm, extra)
            out = pd.DataFrame(T, columns=tcols)
            out.insert(0, user_col, pdf[user_col].to_numpy())
            yield out

    def per_partition(batches):
        import pandas as pd

        U = 0
        S = np.zeros(d)
        Q = np.zeros((d, d))
        for pdf in batches:
            if not len(pdf):
                continue
            V = pdf[tcols].to_numpy(dtype=np.float64)
            U += V.shape[0]
            S += V.sum(axis=0)
            Q += V.T @ V
        if U:
            yield pd.DataFrame({"u": [U], "s": [S.tolist()], "q": [Q.ravel().tolist()]})

    per_user = (_map_in_pandas(frame, per_row, row_schema)
                     .groupBy(col_ref(user_col)).agg(*[F.sum(c).alias(c) for c in tcols]))
    parts = _map_in_pandas(per_user, per_partition, "u long, s array<double>, q array<double>").collect()
    U, S, Q = 0, np.zeros(d), np.zeros((d, d))
    for r in parts:
        U += int(r["u"])
        S += np.asarray(r["s"])
        Q += np.asarray(r["q"]).reshape(d, d)
    return Moments(U, S, Q, tuple(names))
