"""Baseline targeting policies a marketer would try instead of the segmentation model.

- K-means (Spark MLlib) on the *standardised* covariates with m clusters (m = number of
  assignable segments), seeded; each cluster is then mapped, on training rows only, to the
  segment whose creatives respond best among the cluster's users.
- best single creative: the creative with the best training response rate, shown to everyone.

Response rates are Hajek (self-normalised inverse-propensity) rates, sum y/p / sum 1/p, so
they stay unbiased when the logged design was not uniform; with a uniform design they are the
plain response rates. The cluster -> segment and best-creative choices are plain numpy on
(F, C, K) sums (``cluster_segment_map``, ``best_creative``); the sums come from one Spark pass
(``segmentation.evaluation.spark``).
"""
from __future__ import annotations

import gc

import numpy as np


def standardizing_encoding(encoding_dict: dict) -> dict:
    """The same encoding with ``standardize`` forced on (K-means needs comparable scales)."""
    d = dict(encoding_dict)
    d["standardize"] = True
    return d


USERS_PER_PARTITION = 50_000
MAX_PARTITIONS = 200
KMEANS_MAX_USERS = 1_000_000      # training users per fold K-means is fitted on (a hash sample above)
_SAMPLE_SALT = "kmeans-user-sample"
_SAMPLE_BITS = 30


def user_sample(df, user_col: str, fraction: float, seed: int = 0):
    """The rows of a seeded hash sample of about ``fraction`` of the users: user u is kept when
    ``xxhash64(u, salt, seed) mod 2^30 < fraction * 2^30``. All rows of a user go together, the
    same users are kept however ``df`` is split, and the salt makes the sample independent of
    the folds (``pmod(xxhash64(u, seed), F)``), so every fold keeps the same share of its users."""
    from pyspark.sql import functions as F

    from segmentation.data.encode import col_ref

    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"sample fraction must lie in (0, 1]; got {fraction}")
    if fraction == 1.0:
        return df
    h = F.xxhash64(col_ref(user_col), F.lit(_SAMPLE_SALT), F.lit(int(seed)).cast("long"))
    bucket = F.pmod(h, F.lit(1 << _SAMPLE_BITS).cast("long"))
    return df.where(bucket < F.lit(int(round(fraction * (1 << _SAMPLE_BITS)))).cast("long"))


def deterministic_users(df, user_col: str, columns):
    """One row per user (``policy.assign.one_row_per_user``) laid out by the data alone: hash
    partitioned by user into ceil(users / ``USERS_PER_PARTITION``) partitions (at most
    ``MAX_PARTITIONS``; one count of the users), each sorted by (xxhash64(user), user). The
    rows, their partitions and their order are then the same however ``df`` was split (an
    explicit partition count is never coalesced by adaptive execution)."""
    import math

    from pyspark.sql import functions as F

    from segmentation.data.encode import col_ref
    from segmentation.policy.assign import one_row_per_user

    users = one_row_per_user(df, user_col, columns)
    n = users.count()
    parts = int(min(MAX_PARTITIONS, max(1, math.ceil(n / USERS_PER_PARTITION))))
    u = col_ref(user_col)
    return users.repartition(parts, u).sortWithinPartitions(F.xxhash64(u), u)


def fit_kmeans_folds(df, features_col: str, user_col: str, fold_col: str, n_folds: int,
                     k: int, seed: int = 0, max_iter: int = 30, *,
                     max_users: int | None = KMEANS_MAX_USERS, n_users: int | None = None) -> np.ndarray:
    """(F, k, p-1) K-means centres, centre set f fitted on the distinct users of every fold
    but f (``df`` has an array<double> column ``features_col`` of standardised covariates).

    At scale the centres come from a sample: when a fold's training users (about
    ``n_users * (F - 1) / F``; ``n_users`` counted here when not given) exceed ``max_users``,
    K-means is fitted on a seeded hash sample of the users (``user_sample``, fraction
    ``max_users`` over that), taken before the per-user aggregation, so neither the shuffle nor
    MLlib's passes grow beyond it. ``max_users=None`` fits on every user. Four to a few dozen
    centres in tens of dimensions are estimated to well within the baseline's own noise from a
    million points; every user is still assigned to its nearest centre, and evaluated, later.

    Uses ``pyspark.ml.clustering.KMeans`` (k-means||, ``seed`` + f), on the persisted distinct
    users. The result does not depend on how ``df`` is partitioned: k-means|| samples its
    initial centres partition by partition (a seeded generator per partition index, over the
    rows in their order), so the users are first put in a layout that depends on the data only
    (``deterministic_users``): one row per user chosen by value, hash-partitioned by user
    into a number of partitions set by the number of users, sorted by a hash of the user
    within each. Same data and seed, same centres, bit for bit. Measured at 200k users, local[2]: about 4-5 s per fold fit (mostly MLlib
    job overhead; it converges in ~3 iterations), so K-means is the largest part of the evaluation. A fold whose training users
    have fewer distinct points than k gets duplicated centres (MLlib returns fewer; padded by
    repeating the last centre so the array stays rectangular).
    """
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    if max_users is not None:
        if max_users < 1:
            raise ValueError(f"max_users must be at least 1; got {max_users}")
        if n_users is None:
            from segmentation.data.validate import count_users
            n_users = count_users(df, user_col)
        train = n_users * (n_folds - 1) / n_folds
        if train > max_users:
            df = user_sample(df, user_col, max_users / train, seed)
    users = deterministic_users(df, user_col, [fold_col, features_col])
    users = users.select(F.col(fold_col), array_to_vector(F.col(features_col)).alias("_kv")).persist()
    models: list = []           # reachable until every fold is fitted, then freed at once
    try:
        centres = []
        for f in range(n_folds):
            train = users.filter(F.col(fold_col) != f)
            km = KMeans(k=k, seed=int(seed) + f, maxIter=max_iter, featuresCol="_kv",
                        predictionCol="_cluster")
            models.append(km.fit(train))
            C = np.array([np.asarray(c, dtype=float) for c in models[-1].clusterCenters()])
            if C.shape[0] < k:
                C = np.vstack([C, np.repeat(C[-1:], k - C.shape[0], axis=0)])
            centres.append(C)
    finally:
        users.unpersist()
        free_models(models)
    return np.stack(centres)


def free_models(models: list) -> None:
    """Free fitted pyspark.ml models here and now, between Spark calls (empties ``models``).

    Over Spark Connect a fitted model lives on the server, and pyspark deletes it from the
    Python model's ``__del__`` with a blocking request. The Python model sits in a reference
    cycle, so dropping the last name does not free it: its ``__del__`` runs whenever the
    cyclic garbage collector next runs, which can be in the middle of another request of the
    same client, where a nested blocking request can hang the process for good (Spark's own
    Connect ML tests hang this way, SPARK-54986; pyspark 4.3 guards only nested ML-cache
    requests). Holding the models until the end and collecting them here puts every delete at
    this one point, one after another. In classic mode the same ``__del__`` detaches the JVM
    object; freeing it here early is harmless.
    """
    models.clear()
    gc.collect()


def cluster_segment_map(num: np.ndarray, den: np.ndarray, segment_of, assignable) -> np.ndarray:
    """(F, C) segment of each cluster: argmax over assignable segments j of the Hajek response
    rate sum_{k in j} num[f, c, k] / sum_{k in j} den[f, c, k] (num = sum y/p, den = sum 1/p over
    training rows of cluster c shown creative k). Empty cells rank last; a cluster with no
    training rows at all gets the best segment over all clusters of that fold."""
    num = np.asarray(num, float)
    den = np.asarray(den, float)
    seg = np.asarray(segment_of)
    assignable = np.asarray(assignable)
    F, C, _ = num.shape
    out = np.zeros((F, C), dtype=np.int64)
    for f in range(F):
        n_j = np.stack([num[f][:, seg == j].sum(axis=1) for j in assignable], axis=1)  # (C, m_a)
        d_j = np.stack([den[f][:, seg == j].sum(axis=1) for j in assignable], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(d_j > 0, n_j / d_j, -np.inf)
            overall = np.where(d_j.sum(0) > 0, n_j.sum(0) / d_j.sum(0), -np.inf)
        best = np.argmax(rate, axis=1)
        empty = ~np.isfinite(rate).any(axis=1)
        best[empty] = int(np.argmax(overall))
        out[f] = assignable[best]
    return out


def best_creative(num: np.ndarray, den: np.ndarray, treatments) -> np.ndarray:
    """(F,) creative with the highest Hajek training response rate among ``treatments``
    (num/den: (F, K) sums of y/p and 1/p over each fold model's training rows)."""
    num = np.asarray(num, float)
    den = np.asarray(den, float)
    t = np.asarray(treatments)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(den[:, t] > 0, num[:, t] / den[:, t], -np.inf)
    return t[np.argmax(rate, axis=1)]
