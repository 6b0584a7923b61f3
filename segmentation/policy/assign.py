"""Segment assignment in Spark: user -> argmax_j gamma_j . x, with every segment's score.

Scores are built as Spark Column expressions (no Python UDF): with z(x) the fitting-scale
features of the model's encoding, gamma_j . x on the original scale equals
gamma_fit_j . z(x), so the same expressions that built the training design score new users.
Ties go to the first segment in model order (as ``numpy.argmax``).
"""
from __future__ import annotations

import os
import re
import shutil

from segmentation.atomic import replace_dir
from segmentation.data.encode import Encoding, col_ref
from segmentation.errors import DataValidationError
from segmentation.model import SegmentationModel

SEGMENT_COL = "segment"


def score_column_name(segment: str) -> str:
    """``score_<segment>`` with characters Parquet dislikes replaced by ``_``."""
    return "score_" + re.sub(r"[^0-9A-Za-z_]+", "_", segment)


def score_column_names(segments) -> list[str]:
    """One ``score_column_name`` per segment, made unique: names that sanitise alike ("seg a",
    "seg.a") or differ only in case (Spark resolves columns case-insensitively) get ``_2``,
    ``_3``, ... in segment order. The same rule as the pyfunc model's ``SegmentScorer``."""
    out: list[str] = []
    taken: set[str] = set()
    for s in segments:
        base = score_column_name(s)
        name, i = base, 1
        while name.lower() in taken:
            i += 1
            name = f"{base}_{i}"
        out.append(name)
        taken.add(name.lower())
    return out


def segment_score_expressions(model: SegmentationModel) -> dict[str, object]:
    """segment name -> Column computing gamma_j . x, for every assignable segment."""
    from pyspark.sql import functions as F

    enc = Encoding.from_dict(model.encoding)
    feats = enc.feature_expressions()
    out = {}
    for j in model.assignable:
        g = model.gamma_fit[j]
        expr = F.lit(float(g[0]))
        for coef, feat in zip(g[1:], feats):
            if coef != 0.0:
                expr = expr + F.lit(float(coef)) * feat
        out[model.segments[j]] = expr
    return out


def check_columns(df, model: SegmentationModel, user_col: str) -> None:
    enc = Encoding.from_dict(model.encoding)
    needed = [user_col, *enc.numeric, *enc.categorical]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"input is missing column(s) {missing} needed to score the model "
            f"(available: {sorted(df.columns)})")


def assign_segments(df, model: SegmentationModel, user_col: str, keep: list[str] | None = None):
    """DataFrame of ``user_col``, ``segment`` and one ``score_<segment>`` column per segment.

    One row per input row (score a user table, one row per user; for exposure tables with
    several rows per user, deduplicate first). ``keep`` lists extra input columns to carry.
    """
    from pyspark.sql import functions as F

    check_columns(df, model, user_col)
    scores = segment_score_expressions(model)
    names = list(scores)
    cols = dict(zip(score_column_names(names), scores.values()))
    score_cols = list(cols)
    best = F.greatest(*[F.col(c) for c in score_cols]) if len(score_cols) > 1 else F.col(score_cols[0])
    choose = F.lit(None).cast("string")
    for name, c in reversed(list(zip(names, score_cols))):   # first maximum wins
        choose = F.when(F.col(c) == best, F.lit(name)).otherwise(choose)
    carried = [col_ref(c) for c in (keep or [])]
    return (df.select(col_ref(user_col), *carried, *[e.alias(c) for c, e in cols.items()])
              .withColumn(SEGMENT_COL, choose)
              .select(col_ref(user_col), *carried, SEGMENT_COL, *score_cols))


def one_row_per_user(df, user_col: str, columns):
    """``user_col`` and ``columns``, one row per user: of a user's rows, the one whose
    (columns...) tuple is smallest in Spark's ordering (nulls first, NaN last).

    ``dropDuplicates([user_col])`` keeps whichever row reaches the aggregation first, which
    depends on how the input is partitioned; this choice depends on the values only, so a
    user whose rows disagree (covariates logged per exposure) is scored the same however the
    data is split. One aggregation (a shuffle), as ``dropDuplicates``."""
    from pyspark.sql import functions as F

    cols = [c for c in dict.fromkeys(columns) if c != user_col]
    user = col_ref(user_col).alias("_u")
    if not cols:
        return df.select(user).distinct().select(F.col("_u").alias(user_col))
    packed = F.struct(*[col_ref(c).alias(f"_c{i}") for i, c in enumerate(cols)])
    return (df.groupBy(user).agg(F.min(packed).alias("_r"))
              .select(F.col("_u").alias(user_col),
                      *[F.col(f"_r._c{i}").alias(c) for i, c in enumerate(cols)]))


def segment_shares(df, model: SegmentationModel, user_col: str, *,
                   rows_are_users: bool = False) -> dict[str, float]:
    """Share of distinct users assigned to each segment; a user with several rows is scored on
    one of them chosen by value (``one_row_per_user``), so the shares do not depend on how
    ``df`` is partitioned.

    ``rows_are_users``: the caller knows every user has exactly one row (the validation's
    distinct-user count equals its row count, as in a campaign that shows each user one
    creative). Then one row per user is every row, and the rows are scored as they are: one
    narrow scan instead of a shuffle of every covariate (the aggregation that picks a row per
    user). Same shares."""
    from pyspark.sql import functions as F

    check_columns(df, model, user_col)
    enc = Encoding.from_dict(model.encoding)
    users = df if rows_are_users else one_row_per_user(df, user_col, [*enc.numeric, *enc.categorical])
    counts = {r[SEGMENT_COL]: r["n"] for r in
              assign_segments(users, model, user_col).groupBy(SEGMENT_COL).agg(F.count("*").alias("n")).collect()}
    total = sum(counts.values()) or 1
    return {model.segments[j]: counts.get(model.segments[j], 0) / total for j in model.assignable}


def write_parquet_atomic(df, path: str) -> None:
    """Write to a sibling temp path, then rename into place (local filesystem paths).

    For non-local URIs (s3://, abfss://, dbfs:/) Spark's own commit protocol applies and the
    write goes straight to ``path`` in overwrite mode.
    """
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", path) and not path.startswith("file://"):
        df.write.mode("overwrite").parquet(path)
        return
    from segmentation.atomic import staging_dir

    local = path.removeprefix("file://")
    final = os.path.abspath(local)
    stage = staging_dir(final)          # beside final, with an owner record: swept if we are killed
    try:
        tmp = os.path.join(stage, "data")
        df.write.parquet(tmp)
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def design_segment_shares(oracle, model: SegmentationModel) -> dict[str, float]:
    """Share of rows assigned to each segment, counted in the cached design of a fit (one pass
    of ``oracle.block_sum``; no read of the input): the shares of :func:`segment_shares` with
    ``rows_are_users`` (each user has one row), row for row the same choice as
    :func:`assign_segments` (``design_scores.choose_segments``). The design must be the one the
    model was fitted on (its encoding's standardised features)."""
    from functools import partial

    import numpy as np

    from segmentation.policy.design_scores import segment_counts

    if oracle.n_features != len(model.features):
        raise ValueError(f"the design has {oracle.n_features} features, the model "
                         f"{len(model.features)}")
    G = np.asarray(model.gamma_fit, dtype=np.float64)[model.assignable]
    counts = oracle.block_sum(partial(segment_counts, G=G), np.zeros(len(G)),
                              label="segmentation: segment shares")
    total = float(counts.sum()) or 1.0
    return {model.segments[j]: float(counts[i]) / total for i, j in enumerate(model.assignable)}
