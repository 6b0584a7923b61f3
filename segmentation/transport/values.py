"""The value table of coarse personalization: one row per user, one value column per treatment.

Two sources, one table after this module (``ValueTable``), checked the same way:

- a fitted model of ours (``model_values``): for treatment (creative) t and user i,

      v_i(t) = value_per_response * P(y = 1 | t, x_i) - cost_t,
      P(y = 1 | t, x_i) = sigmoid(beta_t . z(x_i)),

  with z the model's encoding (fitting scale, intercept first) and beta_t its coefficients on
  that scale, computed as Spark column expressions (no Python UDF: the same expressions that
  built the training design). ``value_per_response`` and ``cost_per_contact`` come from the
  ``targeting`` section (1 and 0 without it); cost_t = ``transport.costs[t]`` plus
  ``cost_per_contact`` for every treatment but the control arm (a control arm is a treatment
  whose contact costs nothing). With per-fold coefficients (``beta`` of shape (F, K, p)) user i
  is scored by the model of its fold: out-of-fold values (``evaluation.crossfit``).
- a user-supplied table (``table_values``, ``transport.values``): one numeric column per
  treatment, named by ``transport.treatments`` (default: every column but the user id); CATE
  estimates from any tool. ``transport.costs`` are subtracted here too.

``check_value_table`` counts, in one aggregation, null/NaN/infinite values per column, null user
ids and duplicate user ids, and raises ``DataValidationError`` naming them. ``check_limits``
checks the share limits and S against the actual treatments before any Spark work on values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from segmentation.data.encode import Encoding, col_ref
from segmentation.errors import ConfigError, DataValidationError

VALUE_PREFIX = "_v"


@dataclass
class ValueTable:
    """``df`` has ``user_col`` and the value columns ``columns[t]`` of treatments ``names[t]``."""

    df: object
    user_col: str
    columns: list[str]
    names: list[str]
    costs: dict[str, float]
    source: dict = field(default_factory=dict)      # where the values came from (JSON-safe)


# ---- limits and treatments ------------------------------------------------------------------
def check_limits(names: list[str], tc) -> None:
    """The ``transport`` limits against the candidate treatments ``names``: every treatment named
    in ``min_share``/``max_share``/``costs`` exists, S <= |T|, and some set of S treatments
    (those with a positive minimum share included) can hold every user: the forced treatments'
    maximum shares plus the largest remaining ones sum to at least 1. Raises ConfigError."""
    T = set(names)
    for key in ("min_share", "max_share", "costs"):
        unknown = sorted(set(getattr(tc, key)) - T)
        if unknown:
            raise ConfigError(f"config key 'transport.{key}': unknown treatment(s) {unknown} "
                              f"(the treatments are {names})")
    S = tc.max_treatments
    if S > len(names):
        raise ConfigError(f"config key 'transport.max_treatments': {S} exceeds the number of "
                          f"treatments ({len(names)}: {names})")
    forced = [t for t in names if tc.min_share.get(t, 0.0) > 0]
    if len(forced) > S:
        raise ConfigError(f"config key 'transport.min_share': {len(forced)} treatments have a positive "
                          f"minimum share and must all be offered, but transport.max_treatments = {S}")
    lo = sum(float(tc.min_share.get(t, 0.0)) for t in forced)
    if lo > 1.0 + 1e-9:
        raise ConfigError(f"config key 'transport.min_share': the minimum shares sum to {lo:g} > 1: "
                          "no assignment can meet them")
    rest = sorted((float(tc.max_share.get(t, 1.0)) for t in names if t not in forced), reverse=True)
    best = sum(float(tc.max_share.get(t, 1.0)) for t in forced) + sum(rest[:S - len(forced)])
    if best < 1.0 - 1e-9:
        raise ConfigError(f"config key 'transport.max_share': with at most {S} treatments offered the "
                          f"maximum shares sum to at most {best:g} < 1: some users could not be assigned")


def treatment_costs(names: list[str], tc, targeting=None, control: str | None = None) -> dict[str, float]:
    """cost_t = transport.costs[t] + targeting.cost_per_contact (not for the control arm)."""
    contact = float(targeting.cost_per_contact) if targeting is not None else 0.0
    return {t: float(tc.costs.get(t, 0.0)) + (0.0 if t == control else contact) for t in names}


# ---- model-based values ---------------------------------------------------------------------
def _linear(coef: np.ndarray, feats: list):
    from pyspark.sql import functions as F

    expr = F.lit(float(coef[0]))
    for c, f in zip(coef[1:], feats):
        if c != 0.0:
            expr = expr + F.lit(float(c)) * f
    return expr


def model_value_columns(encoding: dict, beta: np.ndarray, treatments: list[int], value_per_response: float,
                        costs: list[float], fold_col: str | None = None) -> list:
    """Spark columns v(t) = value_per_response * sigmoid(beta_t . z(x)) - cost_t, one per treatment.

    ``beta``: (K, p) on ``encoding``'s fitting scale, or (F, K, p) with ``fold_col`` naming the
    int column that says which fold's model scores the row.
    """
    from pyspark.sql import functions as F

    feats = Encoding.from_dict(encoding).feature_expressions()
    beta = np.asarray(beta, dtype=np.float64)
    out = []
    for t, cost in zip(treatments, costs):
        if beta.ndim == 2:
            eta = _linear(beta[t], feats)
        else:
            if fold_col is None:
                raise ValueError("per-fold coefficients need fold_col")
            eta = None
            for f in range(beta.shape[0]):
                e = _linear(beta[f, t], feats)
                eta = F.when(col_ref(fold_col) == f, e) if eta is None else eta.when(col_ref(fold_col) == f, e)
        prob = F.lit(1.0) / (F.lit(1.0) + F.exp(-eta))
        out.append(F.lit(float(value_per_response)) * prob - F.lit(float(cost)))
    return out


def distinct_users(df, user_col: str, columns: list[str]):
    """One row per user: the smallest (lexicographically) tuple of ``columns`` among the user's
    rows, so the result does not depend on row order or partitioning."""
    from pyspark.sql import functions as F

    if not columns:
        return df.select(col_ref(user_col)).distinct()
    packed = F.min(F.struct(*[col_ref(c).alias(f"c{i}") for i, c in enumerate(columns)])).alias("_x")
    g = df.groupBy(col_ref(user_col).alias(user_col)).agg(packed)
    return g.select(col_ref(user_col), *[F.col(f"_x.c{i}").alias(c) for i, c in enumerate(columns)])


def model_treatments(model, tc) -> list[str]:
    """The candidate treatments: ``transport.treatments`` (model creatives) or all creatives."""
    if tc.treatments is None:
        return list(model.creatives)
    unknown = [t for t in tc.treatments if t not in model.creatives]
    if unknown:
        raise ConfigError(f"config key 'transport.treatments': {unknown} are not creatives of the model "
                          f"(its creatives: {list(model.creatives)})")
    return list(tc.treatments)


def model_values(users, user_col: str, model, tc, targeting=None, *, beta=None, encoding=None,
                 fold_col: str | None = None, source: dict | None = None) -> ValueTable:
    """Value columns of ``users`` (one row per user, the model's covariates) from ``model``
    (default coefficients ``model.beta_fit`` on ``model.encoding``; or ``beta`` (F, K, p) per fold
    with ``fold_col`` on ``encoding``)."""
    names = model_treatments(model, tc)
    enc = encoding if encoding is not None else model.encoding
    enc_obj = Encoding.from_dict(enc)
    missing = [c for c in [user_col, *enc_obj.numeric, *enc_obj.categorical] if c not in users.columns]
    if missing:
        raise DataValidationError(f"the user table is missing column(s) {missing} needed to score the "
                                  f"model (available: {sorted(users.columns)})")
    costs = treatment_costs(names, tc, targeting, model.control)
    vpr = float(targeting.value_per_response) if targeting is not None else 1.0
    idx = [list(model.creatives).index(t) for t in names]
    B = np.asarray(model.beta_fit if beta is None else beta, dtype=np.float64)
    cols = model_value_columns(enc, B, idx, vpr, [costs[t] for t in names], fold_col)
    columns = [f"{VALUE_PREFIX}{i}" for i in range(len(names))]
    df = users.select(col_ref(user_col).alias(user_col), *[c.alias(n) for c, n in zip(cols, columns)])
    info = {"kind": "model", "value_per_response": vpr, "costs": costs,
            "out_of_fold": beta is not None and np.ndim(beta) == 3,
            "formula": "value_per_response * P(response | treatment, x) - cost"}
    info.update(source or {})
    return ValueTable(df, user_col, columns, names, costs, info)


# ---- user-supplied values -------------------------------------------------------------------
def table_values(df, user_col: str, tc, source: str) -> ValueTable:
    """The value table ``df``: columns ``transport.treatments`` (default all but ``user_col``),
    minus ``transport.costs``. Missing or non-numeric columns raise DataValidationError."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType

    fields = {f.name: f.dataType for f in df.schema.fields}
    if user_col not in fields:
        raise DataValidationError(f"config key 'transport.user_col': the value table {source} has no "
                                  f"column {user_col!r} (available: {sorted(fields)})")
    names = list(tc.treatments) if tc.treatments is not None else [c for c in df.columns if c != user_col]
    if not names:
        raise DataValidationError(f"the value table {source} has no value column besides {user_col!r}")
    missing = [t for t in names if t not in fields]
    if missing:
        raise DataValidationError(f"config key 'transport.treatments': the value table {source} is missing "
                                  f"column(s) {missing} (available: {sorted(fields)})")
    bad = [f"{t} ({fields[t].simpleString()})" for t in names if not isinstance(fields[t], NumericType)]
    if bad:
        raise DataValidationError(f"value column(s) of {source} must be numeric: {bad}")
    check_limits(names, tc)
    costs = {t: float(tc.costs.get(t, 0.0)) for t in names}
    columns = [f"{VALUE_PREFIX}{i}" for i in range(len(names))]
    cols = [(col_ref(t).cast("double") - F.lit(costs[t])).alias(c) for t, c in zip(names, columns)]
    out = df.select(col_ref(user_col).alias(user_col), *cols)
    return ValueTable(out, user_col, columns, names, costs,
                      {"kind": "table", "path": source, "costs": costs, "out_of_fold": False})


# ---- checks ----------------------------------------------------------------------------------
def check_value_table(vt: ValueTable) -> int:
    """One aggregation: rows, null and duplicate user ids, null/NaN/infinite values per column.
    Returns the number of users; raises DataValidationError naming every culprit and count."""
    from pyspark.sql import functions as F

    u = col_ref(vt.user_col)
    aggs = [F.count(F.lit(1)).alias("n"), F.count_distinct(u).alias("distinct"),
            F.sum(u.isNull().cast("long")).alias("null_users")]
    for i, c in enumerate(vt.columns):
        x = F.col(c)
        aggs += [F.sum(x.isNull().cast("long")).alias(f"null{i}"), F.sum(F.isnan(x).cast("long")).alias(f"nan{i}"),
                 F.sum((F.abs(x) == F.lit(math.inf)).cast("long")).alias(f"inf{i}")]
    r = vt.df.agg(*aggs).collect()[0]
    n = int(r["n"])
    problems = []
    if n == 0:
        raise DataValidationError(f"the user table ({vt.source.get('path') or vt.source.get('users')}) has no rows")
    if r["null_users"]:
        problems.append(f"{int(r['null_users'])} row(s) with a null user id ({vt.user_col!r})")
    dup = n - int(r["distinct"]) - int(r["null_users"] or 0)
    if dup:
        problems.append(f"{dup} duplicate user id(s) in {vt.user_col!r} (one row per user expected)")
    for i, (c, t) in enumerate(zip(vt.columns, vt.names)):
        kinds = [(k, int(r[f"{k}{i}"] or 0)) for k in ("null", "nan", "inf")]
        kinds = [f"{cnt} {k}" for k, cnt in kinds if cnt]
        if kinds:
            problems.append(f"value column {t!r}: " + ", ".join(kinds))
    if problems:
        where = vt.source.get("path") or vt.source.get("users") or "the value table"
        hint = (" (model values are null where a covariate is null)" if vt.source.get("kind") == "model" else "")
        raise DataValidationError(f"bad values in {where}: " + "; ".join(problems) + hint)
    return n
