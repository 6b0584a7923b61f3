"""Cross-validation folds by user: every row of a user lands in the same fold."""
from __future__ import annotations

from segmentation.data.encode import col_ref


def fold_expression(user_col: str, n_folds: int, seed: int = 0):
    """The Spark int expression ``pmod(xxhash64(user, seed), n_folds)`` (a literal 0 if n_folds == 1)."""
    from pyspark.sql import functions as F

    n_folds = _check_n_folds(n_folds)
    if n_folds == 1:
        return F.lit(0).cast("int")
    h = F.xxhash64(col_ref(user_col), F.lit(int(seed)).cast("long"))
    return F.pmod(h, F.lit(n_folds).cast("long")).cast("int")


def assign_folds(df, user_col: str, n_folds: int, seed: int = 0, fold_col: str = "fold"):
    """Add the int column ``fold_col`` (default ``fold``) in 0..n_folds-1.

    The fold is ``pmod(xxhash64(user, seed), n_folds)``: a pure function of the user id and the
    seed, so all rows of a user share a fold, reruns (and other partitionings) give the same
    folds, and another seed gives an independent split. Folds are balanced in users up to
    binomial noise, not exactly. ``n_folds == 1`` puts every row in fold 0. A null user id
    hashes like any other value (all null users share one fold).
    """
    return df.withColumn(fold_col, fold_expression(user_col, n_folds, seed))


def _check_n_folds(n_folds) -> int:
    """``n_folds`` as a positive int, or ValueError."""
    if isinstance(n_folds, bool) or int(n_folds) != n_folds or int(n_folds) < 1:
        raise ValueError(f"n_folds must be a positive integer, got {n_folds!r}")
    return int(n_folds)
