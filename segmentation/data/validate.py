"""Checking exposure rows against the data contract before anything is fitted.

Contract: one row per (user, exposure) with a user id, a creative name, a binary response
(0/1 numbers or booleans), numeric covariates with no null/NaN/inf, categorical covariates with
no null, every creative mapped to exactly one segment (or equal to the control creative), every
segment with at least one creative present, and at least one row.

``validate_exposures`` checks the schema on the driver (no job), then runs two small queries:

1. a ``groupBy`` over the creative with the row counts that need it (rows, positives, bad
   responses, null users; the covariates are not read), unioned with the exact distinct user
   count (``distinct`` then ``count``, kept out of the groupBy: a ``count_distinct`` next to
   other aggregates makes Spark expand every row once per distinct aggregate);
2. one global aggregation (no grouping) with plain ``count``/``min``/``max`` per covariate:
   on clean data that is all the checks need (no null <=> count == rows; NaN sorts above every
   number in Spark, so max is NaN when any value is; +/-inf show as max/min). Only for the
   covariates it flags does a third small query count the null/NaN/infinite rows exactly, so
   the error messages are unchanged.

:func:`validate_and_encode` adds the encoding's means and population sds (``avg``,
``stddev_pop``) to aggregation 2, so ``prepare()`` scans the covariates once for both. At
thousands of covariates aggregation 2 is split into queries of at most ``_MAX_AGG_FIELDS``
buffer fields (with Parquet each reads only its own columns) with whole-stage code generation
kept on (see ``_global_aggregates``). Measured (local[2], shared 2-core machine): 1M rows x 50
covariates, validation + encoding about 5-10 s warm against 15-28 s for the former rollup
query plus ``fit_encoding``; see ``benchmarks/bench_prepare.py``. The input is scanned by each
query: cache it first if it is expensive to produce. Only when the response check fails does
another small query fetch example values for the error message. All problems found are
reported together in one ``DataValidationError`` whose message names each column/key and the
number of offending rows.

``prepare()`` does not run those aggregations: :func:`scan_and_validate` measures the same
statistics inside the ``mapInArrow`` that converts the rows into blocks (one read of the
covariates instead of three; the exact distinct user count stays a Spark ``distinct``), then
builds the problem list with the same code (:func:`_judge`), so the messages are identical.
Measured 1M rows x 50 covariates, local[2], in one run (``benchmarks/bench_prepare_scan.py``,
``benchmarks/results/prepare_scan.md``): see there for prepare() against one aggregate scan.
"""
from __future__ import annotations

import contextlib
import difflib
import logging
import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from segmentation.data.encode import col_ref, numeric_type_names
from segmentation.errors import DataValidationError

log = logging.getLogger(__name__)

_CREATIVE = "__creative"
_GID = "__gid"


@dataclass
class ValidationReport:
    """What ``validate_exposures`` measured on data that passed.

    ``rows_per_creative`` / ``positives_per_creative`` cover every
    creative present in the data (control included); ``constant_covariates`` lists numeric
    covariates with a single value over all rows (not an error: the encoding centres them and
    scales them by 1); ``warnings`` are human-readable sentences.
    """

    n_rows: int
    n_users: int
    rows_per_creative: dict[str, int]
    positives_per_creative: dict[str, int]
    constant_covariates: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def n_positives(self) -> int:
        """Total positive responses."""
        return int(sum(self.positives_per_creative.values()))

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)


def validate_segments(segments: dict[str, list[str]], control: str | None = None) -> dict[str, str]:
    """Check the segment -> creatives mapping alone (pure Python, no data).

    Raises ``DataValidationError`` when the mapping is empty, a segment has no creatives, a
    creative is listed twice in a segment or mapped to two segments, or the control creative
    belongs to a segment. Returns the inverse map creative -> segment.
    """
    if not isinstance(segments, dict) or not segments:
        raise DataValidationError("segments must be a non-empty mapping segment -> list of creatives")
    owner: dict[str, str] = {}
    problems: list[str] = []
    for seg, creatives in segments.items():
        if isinstance(creatives, str) or not hasattr(creatives, "__iter__"):
            problems.append(f"segment '{seg}' must map to a list of creatives, got {creatives!r}")
            continue
        creatives = [str(c) for c in creatives]
        if not creatives:
            problems.append(f"segment '{seg}' has no creatives")
        seen: set[str] = set()
        for c in creatives:
            if c in seen:
                problems.append(f"creative '{c}' is listed twice in segment '{seg}'")
                continue
            seen.add(c)
            if c in owner:
                problems.append(f"creative '{c}' is mapped to two segments: '{owner[c]}' and '{seg}'")
            else:
                owner[c] = str(seg)
    if control is not None and str(control) in owner:
        problems.append(
            f"control creative '{control}' must not belong to a segment, but segment "
            f"'{owner[str(control)]}' lists it"
        )
    if problems:
        raise DataValidationError("invalid segment mapping: " + "; ".join(problems))
    return owner


def _suggest(name: str, available: list[str]) -> str:
    """' (did you mean ...?)' from exact-case-insensitive and difflib close matches, or ''."""
    lower = {a.lower(): a for a in available}
    matches = []
    if name.lower() in lower:
        matches.append(lower[name.lower()])
    for m in difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.6):
        if lower[m] not in matches:
            matches.append(lower[m])
    return f" (did you mean {', '.join(repr(m) for m in matches)}?)" if matches else ""


def _check_schema(df, user_col, creative_col, response_col, covariates, categorical) -> dict:
    """Column presence, roles and types; raises with every problem found. Returns name -> type."""
    from pyspark.sql import types as T

    columns = list(df.columns)
    types = {f.name: f.dataType for f in df.schema.fields}
    roles = [("user", user_col), ("creative", creative_col), ("response", response_col)]
    roles += [("covariate", c) for c in covariates] + [("categorical", c) for c in categorical]
    problems: list[str] = []
    missing = [(role, name) for role, name in roles if name not in types]
    for role, name in missing:
        problems.append(f"{role} column '{name}' not found{_suggest(name, columns)}")
    if missing:
        problems.append(f"available columns: {columns}")
    dup_in_df = sorted({c for c in columns if columns.count(c) > 1} & {n for _, n in roles})
    for name in dup_in_df:
        problems.append(f"column '{name}' appears {columns.count(name)} times in the data")
    used: dict[str, str] = {}
    for role, name in roles:
        if name in used:
            problems.append(f"column '{name}' is used both as {used[name]} and as {role}")
        else:
            used[name] = role
    if problems:
        raise DataValidationError("exposure data failed validation: " + "; ".join(problems))

    numeric = numeric_type_names()
    complex_types = (T.ArrayType, T.MapType, T.StructType, T.BinaryType)
    for c in covariates:
        if not isinstance(types[c], numeric):
            problems.append(f"covariate '{c}' is not numeric (type {types[c].simpleString()})")
    rt = types[response_col]
    if not isinstance(rt, numeric + (T.BooleanType,)):
        problems.append(
            f"response column '{response_col}' has type {rt.simpleString()}; expected 0/1 numbers "
            "or booleans"
        )
    for role, name in roles:
        if role in ("user", "creative", "categorical") and isinstance(types[name], complex_types):
            problems.append(f"{role} column '{name}' has unsupported type {types[name].simpleString()}")
    if problems:
        raise DataValidationError("exposure data failed validation: " + "; ".join(problems))
    return types


def _fmt_names(names, limit: int = 20) -> str:
    """``['a', 'b']`` style list, cut after ``limit`` names."""
    names = list(names)
    shown = names[:limit]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{shown}{more}"


def validate_exposures(df, *, user_col: str, creative_col: str, response_col: str,
                       covariates, categorical=(), segments: dict[str, list[str]],
                       control: str | None = None) -> ValidationReport:
    """Check exposure rows against the contract; return a :class:`ValidationReport`.

    Errors (all collected, raised together as one ``DataValidationError``): invalid segment
    mapping (see :func:`validate_segments`); missing or misspelled columns (with the available
    columns and close matches); a column used in two roles; non-numeric covariates (name and
    type); an unusable response type; an empty table; null user or creative ids; responses
    that are null or not 0/1 (count and examples); null, NaN or infinite numeric covariates
    (count per column); null categorical values (count per column); creatives in the data with
    no segment (names and row counts); segments none of whose creatives appear in the data; a
    control creative missing from the data.

    Warnings (in the report): a mapped creative absent from the data while its segment has
    others; a creative with no positive (or only positive) responses; constant covariates;
    a categorical column with a single level.

    Cost: two Spark queries (a groupBy over the creative unioned with a distinct user count;
    one global aggregation of count/min/max per covariate, split at thousands of covariates);
    one more small query when covariates hold bad values (exact counts) and when the response
    check fails (examples).
    """
    report, _ = _validate(df, user_col=user_col, creative_col=creative_col,
                          response_col=response_col, covariates=covariates,
                          categorical=categorical, segments=segments, control=control,
                          moments=False)
    return report


def validate_and_encode(df, *, user_col: str, creative_col: str, response_col: str,
                        covariates, categorical=(), segments: dict[str, list[str]],
                        control: str | None = None, standardize: bool = True,
                        max_levels: int = 200):
    """``(validate_exposures(...), fit_encoding(...))`` with the data scanned once for both.

    Same checks, errors and warnings as :func:`validate_exposures` (validation errors come
    first), then the same :class:`~segmentation.data.encode.Encoding` (and the same errors) as
    :func:`~segmentation.data.encode.fit_encoding` on the same rows: the means and population
    sds of the numeric covariates (Spark's ``avg`` / ``stddev_pop``) are computed by the
    validation's global aggregation instead of a second scan. Categorical columns add one
    small ``groupBy`` for their level counts (as in ``fit_encoding``).
    """
    from segmentation.data.encode import categorical_level_counts, encoding_from_statistics

    covariates = [str(c) for c in covariates]
    categorical = [str(c) for c in categorical]
    report, moments = _validate(df, user_col=user_col, creative_col=creative_col,
                                response_col=response_col, covariates=covariates,
                                categorical=categorical, segments=segments, control=control,
                                moments=True)
    level_counts: dict[str, dict[str, int]] = {c: {} for c in categorical}
    n_rows = report.n_rows
    if categorical:
        level_counts, n_rows = categorical_level_counts(df, categorical)
    encoding = encoding_from_statistics(covariates, categorical, moments, level_counts, n_rows,
                                        standardize=standardize, max_levels=max_levels)
    return report, encoding


# The global aggregation is split into chunks of at most this many aggregation-buffer fields
# (count/min/max: 1 each, avg: 2, stddev_pop: 3), one query each; with Parquet input each chunk
# reads only its own columns. Spark turns whole-stage code generation off for a plan with more
# than ``spark.sql.codegen.maxFields`` (default 100) fields, and the fallback is slower (1M rows
# x 50 covariates with moments, 400 fields: 6.3 s warm against 1.9 s with whole-stage codegen),
# so the limit is raised to the chunk's width for the duration of each query. Measured at
# 100k rows x 2,000 covariates (local[2]): chunks of 2,000 fields fail to compile ("Code grows
# beyond 64 KB": Spark logs the error and falls back, about 9 s per chunk, 75-104 s in all);
# 1,000 fields compile (16 chunks, 79 s); a single aggregation without whole-stage codegen had
# not finished after 6 minutes.
_MAX_AGG_FIELDS = 1000
_FIELDS = {"count": 1, "min": 1, "max": 1, "avg": 2, "stddev_pop": 3}


def _global_aggregates(df, specs: list[list[tuple]]) -> dict:
    """Run ``df.agg`` over ``specs`` (one list of (name, column, fn) per covariate) in chunks of
    at most ``_MAX_AGG_FIELDS`` buffer fields; return {name: value}."""
    from pyspark.sql import functions as F

    chunks: list[list[tuple]] = []
    width = 0
    for spec in specs:
        w = sum(_FIELDS[fn] for _, _, fn in spec)
        if not chunks or width + w > _MAX_AGG_FIELDS:
            chunks.append([])
            width = 0
        chunks[-1].extend(spec)
        width += w
    out: dict = {}
    spark = df.sparkSession
    for chunk in chunks:
        width = sum(_FIELDS[fn] for _, _, fn in chunk)
        aggs = [getattr(F, fn)(col).alias(name) for name, col, fn in chunk]
        with _codegen_max_fields(spark, width + 8):
            out.update(df.agg(*aggs).collect()[0].asDict())
    return out


class _codegen_max_fields:
    """Context manager: ``spark.sql.codegen.maxFields`` at least ``n`` inside, restored after."""

    KEY = "spark.sql.codegen.maxFields"

    def __init__(self, spark, n: int):
        self.spark, self.n, self.old = spark, int(n), None

    def __enter__(self):
        try:
            self.old = self.spark.conf.get(self.KEY, None)
            if self.n > int(self.old or 100):
                self.spark.conf.set(self.KEY, str(self.n))
            else:
                self.spark = None
        except Exception:  # a session that refuses the setting runs without it
            self.spark = None
        return self

    def __exit__(self, *exc):
        if self.spark is not None:
            try:
                if self.old is None:
                    self.spark.conf.unset(self.KEY)
                else:
                    self.spark.conf.set(self.KEY, self.old)
            except Exception:
                pass
        return False


def _validate(df, *, user_col, creative_col, response_col, covariates, categorical, segments,
              control, moments: bool):
    """The work of :func:`validate_exposures`; with ``moments`` also {covariate: (mean, sd)}."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    covariates = [str(c) for c in covariates]
    categorical = [str(c) for c in categorical]
    owner = validate_segments(segments, control)
    types = _check_schema(df, user_col, creative_col, response_col, covariates, categorical)

    resp = col_ref(response_col)
    if isinstance(types[response_col], T.BooleanType):
        bad_resp = resp.isNull()
        positive = F.when(resp, F.lit(1)).otherwise(F.lit(0))
    else:
        bad_resp = resp.isNull() | ~resp.isin(0, 1)
        positive = F.when(resp == F.lit(1), F.lit(1)).otherwise(F.lit(0))

    def nsum(cond):
        """Number of rows where ``cond`` holds (a long)."""
        return F.sum(F.when(cond, F.lit(1)).otherwise(F.lit(0))).cast("long")

    def is_float(c):
        return isinstance(types[c], (T.FloatType, T.DoubleType))

    def invalid(c):
        """Null, or NaN/infinite for floating types."""
        x = col_ref(c)
        bad = x.isNull()
        if is_float(c):
            bad = bad | F.isnan(x) | x.isin(float("inf"), float("-inf"))
        return bad

    # ---------------------------------------------- query 1: per creative, plus distinct users
    # A plain groupBy over the creative with the 4 row counts (the covariates are not read),
    # unioned with the exact distinct user count (kept out of the groupBy: a count_distinct
    # next to other aggregates makes Spark expand every row once per distinct aggregate).
    creative = col_ref(creative_col).cast("string").alias(_CREATIVE)
    per_creative = df.groupBy(creative).agg(
        F.count(F.lit(1)).alias("n"),
        F.sum(positive).cast("long").alias("pos"),
        nsum(bad_resp).alias("bad_resp"),
        nsum(col_ref(user_col).isNull()).alias("null_user"),
    ).withColumn(_GID, F.lit(0))
    users = df.select(col_ref(user_col).alias("__u")).where(F.col("__u").isNotNull()).distinct() \
        .agg(F.count(F.lit(1)).alias("users")).withColumn(_GID, F.lit(2))
    rows = per_creative.unionByName(users, allowMissingColumns=True).collect()
    n_users = next(int(r["users"]) for r in rows if r[_GID] == 2)
    groups = {r[_CREATIVE]: r for r in rows if r[_GID] == 0}
    n_rows = sum(int(r["n"]) for r in groups.values())
    if n_rows == 0:
        raise DataValidationError("exposure data failed validation: the exposure table is empty (0 rows)")
    total = {
        "n": n_rows,
        "null_user": sum(int(r["null_user"]) for r in groups.values()),
        "bad_resp": sum(int(r["bad_resp"]) for r in groups.values()),
    }

    # ---------------------------------------------- query 2: one global aggregation
    # Per numeric covariate: count (non-null), min, max, and with ``moments`` avg and
    # stddev_pop of the double value; per categorical: count, min, max of the string value.
    # Plain aggregates over the columns, no CASE expressions: clean data needs nothing else
    # (no null <=> count == n; NaN sorts above every number in Spark, so max is NaN if any
    # value is NaN, and +/-inf show as the max/min). Only flagged covariates are counted
    # exactly, by a second small query.
    specs = []
    for k, c in enumerate(covariates):
        x = col_ref(c)
        spec = [(f"cnt_x{k}", x, "count"), (f"min_x{k}", x, "min"), (f"max_x{k}", x, "max")]
        if moments:
            spec += [(f"avg_x{k}", x.cast("double"), "avg"),
                     (f"sd_x{k}", x.cast("double"), "stddev_pop")]
        specs.append(spec)
    for k, c in enumerate(categorical):
        s = col_ref(c).cast("string")
        specs.append([(f"cnt_c{k}", col_ref(c), "count"), (f"min_c{k}", s, "min"),
                      (f"max_c{k}", s, "max")])
    glob = _global_aggregates(df, specs)

    bad_x: dict[int, int] = {}
    for k, c in enumerate(covariates):
        lo, hi = glob[f"min_x{k}"], glob[f"max_x{k}"]
        flagged = glob[f"cnt_x{k}"] < n_rows
        if is_float(c) and not flagged:
            flagged = any(v is not None and not math.isfinite(v) for v in (lo, hi))
        if flagged:
            bad_x[k] = -1
    if bad_x:
        # exact counts (and min/max over valid values) for the flagged covariates only
        aggs = []
        for k in bad_x:
            c = covariates[k]
            x = col_ref(c)
            aggs += [nsum(invalid(c)).alias(f"bad_x{k}"),
                     F.min(F.when(~invalid(c), x)).alias(f"min_x{k}"),
                     F.max(F.when(~invalid(c), x)).alias(f"max_x{k}")]
        row = df.agg(*aggs).collect()[0]
        for k in bad_x:
            bad_x[k] = int(row[f"bad_x{k}"])
            glob[f"min_x{k}"], glob[f"max_x{k}"] = row[f"min_x{k}"], row[f"max_x{k}"]
    for k in range(len(covariates)):
        total[f"bad_x{k}"] = bad_x.get(k, 0)
        total[f"min_x{k}"], total[f"max_x{k}"] = glob[f"min_x{k}"], glob[f"max_x{k}"]
    for k in range(len(categorical)):
        total[f"null_c{k}"] = n_rows - int(glob[f"cnt_c{k}"])
        total[f"min_c{k}"], total[f"max_c{k}"] = glob[f"min_c{k}"], glob[f"max_c{k}"]
    mom = {c: (glob[f"avg_x{k}"], glob[f"sd_x{k}"]) for k, c in enumerate(covariates)} if moments else None

    def examples():
        return [r[0] for r in
                df.where(bad_resp).select(resp.cast("string")).distinct().limit(5).collect()]

    report = _judge(groups, total, n_users=n_users, owner=owner, user_col=user_col,
                    creative_col=creative_col, response_col=response_col, covariates=covariates,
                    categorical=categorical, segments=segments, control=control,
                    response_examples=examples)
    return report, mom


def _judge(groups: dict, total: dict, *, n_users: int, owner: dict, user_col: str,
           creative_col: str, response_col: str, covariates: list, categorical: list,
           segments: dict, control, response_examples) -> ValidationReport:
    """The checks on the measured statistics: raise one ``DataValidationError`` with every
    problem, else return the report with its warnings. ``groups`` maps each creative name in
    the data (None for null creatives) to ``{"n": rows, "pos": positives}``; ``total`` holds
    ``n``, ``null_user``, ``bad_resp``, and per covariate k ``bad_x{k}``/``min_x{k}``/``max_x{k}``,
    per categorical k ``null_c{k}``/``min_c{k}``/``max_c{k}``; ``response_examples()`` returns
    up to 5 offending response values as strings (called only when some are bad). Shared by
    :func:`validate_exposures` (statistics from Spark aggregations) and the fused scan of
    ``prepare()`` (statistics from the block conversion), so both give the same messages."""
    problems: list[str] = []
    warnings: list[str] = []
    if None in groups:
        problems.append(f"creative column '{creative_col}' has {groups[None]['n']:,} null rows")
    if total["null_user"]:
        problems.append(f"user column '{user_col}' has {total['null_user']:,} null rows")
    if total["bad_resp"]:
        examples = ["null" if v is None else v for v in response_examples()]
        problems.append(
            f"response column '{response_col}' has {total['bad_resp']:,} rows that are not 0/1 "
            f"(examples: {examples})"
        )
    constant: list[str] = []
    for k, c in enumerate(covariates):
        if total[f"bad_x{k}"]:
            problems.append(f"covariate '{c}' has {total[f'bad_x{k}']:,} null, NaN or infinite rows")
        lo, hi = total[f"min_x{k}"], total[f"max_x{k}"]
        if lo is not None and lo == hi:
            constant.append(c)
    for k, c in enumerate(categorical):
        if total[f"null_c{k}"]:
            problems.append(f"categorical '{c}' has {total[f'null_c{k}']:,} null rows")
        lo, hi = total[f"min_c{k}"], total[f"max_c{k}"]
        if lo is not None and lo == hi:
            warnings.append(f"categorical '{c}' has a single level ({lo!r}): it adds no feature")

    present = {c: r for c, r in groups.items() if c is not None}
    mapped_absent = [c for c in owner if c not in present]
    unmapped = sorted((c for c in present if c not in owner and c != control),
                      key=lambda c: (-present[c]["n"], c))
    if unmapped:
        n_unmapped = sum(present[c]["n"] for c in unmapped)
        hints = []
        for c in unmapped[:20]:
            close = difflib.get_close_matches(c, mapped_absent, n=1, cutoff=0.6)
            if close:
                hints.append(f"'{c}' -> '{close[0]}'")
        hint = f"; mapped creatives absent from the data that look similar: {', '.join(hints)}" if hints else ""
        per = ", ".join(f"'{c}': {present[c]['n']:,}" for c in unmapped[:20])
        problems.append(
            f"creatives in the data with no segment: {_fmt_names(unmapped)} ({n_unmapped:,} rows; "
            f"{per}){hint}"
        )
    empty_segments = [s for s, crs in segments.items() if not any(str(c) in present for c in crs)]
    for s in empty_segments:
        problems.append(
            f"segment '{s}' has no creative in the data (its creatives "
            f"{[str(c) for c in segments[s]]} have 0 rows)"
        )
    if control is not None and str(control) not in present:
        problems.append(
            f"control creative '{control}' not found in the data (0 rows){_suggest(str(control), list(present))}"
        )
    if problems:
        raise DataValidationError("exposure data failed validation: " + "; ".join(problems))

    empty = set(empty_segments)
    absent = [c for c in mapped_absent if owner[c] not in empty]
    if absent:
        warnings.append(
            "creatives mapped to a segment but absent from the data (0 rows): "
            + ", ".join(f"'{c}' (segment '{owner[c]}')" for c in absent)
        )
    for c in sorted(present):
        n, pos = int(present[c]["n"]), int(present[c]["pos"])
        if pos == 0:
            warnings.append(f"creative '{c}' has no positive responses ({n:,} rows)")
        elif pos == n:
            warnings.append(f"creative '{c}' has only positive responses ({n:,} rows)")
    if constant:
        warnings.append(f"covariates constant over all rows: {constant}")

    return ValidationReport(
        n_rows=int(total["n"]),
        n_users=n_users,
        rows_per_creative={c: int(present[c]["n"]) for c in sorted(present)},
        positives_per_creative={c: int(present[c]["pos"]) for c in sorted(present)},
        constant_covariates=constant,
        warnings=warnings,
    )


# ----------------------------------------------------------------------------- fused scan
# ``prepare()`` reads the input once: validation, the encoding's moments and the numeric
# blocks all come from one ``mapInArrow`` over the raw rows (see :func:`scan_and_validate`).


def scan_frame(df, *, user_col: str, creative_col: str, response_col: str, covariates,
               categorical=(), levels: dict[str, list[str]] | None = None, creatives,
               n_folds: int = 1, seed: int = 0, types: dict | None = None):
    """The narrow frame the fused scan reads: ``y`` (int8: 1 positive, 0 negative, -1 when the
    response is null or not 0/1, the rule of :func:`validate_exposures`), ``c`` (int creative
    index in ``creatives``; -1 for a creative not in the list, -2 for null), ``f`` (fold,
    ``folds.fold_expression``), ``nu`` (user is null), then the features as plain double
    columns ``x0, x1, ...``: each numeric covariate cast to double (null stays null), then one
    0/1 indicator per categorical level of ``levels``.

    Plain columns rather than one ``array<double>``: Spark writes them into Arrow column by
    column (no per-row array to build and no list offsets), and the task assembles the rows in
    numpy per batch (``blockstore.scan_partition``). Measured 100k rows x 2,000 covariates and
    1M x 50, local[2]: see ``benchmarks/results/prepare_scan.md``."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from segmentation.data.folds import fold_expression

    if types is None:
        types = {f.name: f.dataType for f in df.schema.fields}
    resp = col_ref(response_col)
    if isinstance(types[response_col], T.BooleanType):
        bad_resp, positive = resp.isNull(), resp
    else:
        bad_resp, positive = resp.isNull() | ~resp.isin(0, 1), resp == F.lit(1)
    y = F.when(bad_resp, F.lit(-1)).when(positive, F.lit(1)).otherwise(F.lit(0)).cast("byte")
    creatives = [str(c) for c in creatives]
    cr = col_ref(creative_col)
    if creatives:
        mapping = F.map_from_arrays(F.array(*[F.lit(c) for c in creatives]),
                                    F.array(*[F.lit(i) for i in range(len(creatives))]))
        idx = F.coalesce(F.try_element_at(mapping, cr.cast("string")).cast("int"), F.lit(-1))
    else:
        idx = F.lit(-1)
    c = F.when(cr.isNull(), F.lit(-2)).otherwise(idx).cast("int")
    xs = [col_ref(v).cast("double") for v in covariates]
    for v in categorical:
        s = col_ref(v).cast("string")
        xs += [F.when(s == F.lit(level), F.lit(1.0)).otherwise(F.lit(0.0)) for level in (levels or {}).get(v, [])]
    return df.select(y.alias("y"), c.alias("c"),
                     fold_expression(user_col, n_folds, seed).cast("int").alias("f"),
                     col_ref(user_col).isNull().alias("nu"),
                     *[e.alias(f"x{j}") for j, e in enumerate(xs)])


def task_validation_error(exc: BaseException) -> str | None:
    """The message of a ``DataValidationError`` raised inside a Spark task (Spark hands it to the
    driver as a ``PythonException`` whose text ends with the worker's traceback), or None."""
    found = re.findall(r"DataValidationError: ([^\n]+)", str(exc))
    return found[-1].strip() if found else None


@contextlib.contextmanager
def task_errors_unwrapped():
    """Inside: a ``DataValidationError`` raised in a Spark task (Spark hands it to the driver
    wrapped in its own exception) is raised again as a ``DataValidationError`` with its message,
    so the CLI exits 2 with it."""
    try:
        yield
    except DataValidationError:
        raise
    except Exception as exc:
        said = task_validation_error(exc)
        if said is None:
            raise
        raise DataValidationError(said) from None


def count_users(df, user_col: str) -> int:
    """Exact number of distinct non-null users (``distinct`` then ``count``), with the shuffle
    cut to a few partitions per core (Spark's default 200 costs more than the count itself on
    a small cluster: measured 1M rows, local[2]: 1.0 s against 1.8-4 s)."""
    from pyspark.sql import functions as F

    u = df.select(col_ref(user_col).alias("__u")).where(F.col("__u").isNotNull())
    with _shuffle_partitions_at_most(df.sparkSession, 4):
        return int(u.distinct().count())


class _session_conf:
    """Context manager: the session conf ``key`` set to ``choose(current value or None)`` inside
    (no change when that returns None, or over a session refusing it), restored after."""

    def __init__(self, spark, key: str, choose):
        self.spark, self.key, self.choose, self.old, self.set = spark, key, choose, None, False

    def __enter__(self):
        try:
            self.old = self.spark.conf.get(self.key, None)
            new = self.choose(self.old)
            if new is not None and str(new) != self.old:
                self.spark.conf.set(self.key, str(new))
                self.set = True
        except Exception:  # noqa: BLE001 - Spark Connect (no SparkContext) or a locked conf
            self.set = False
        return self

    def __exit__(self, *exc):
        if self.set:
            try:
                if self.old is None:
                    self.spark.conf.unset(self.key)
                else:
                    self.spark.conf.set(self.key, self.old)
            except Exception:  # noqa: BLE001
                pass
        return False


def _shuffle_partitions_at_most(spark, per_core: int):
    """``spark.sql.shuffle.partitions`` at most ``per_core`` x the default parallelism inside
    (classic sessions; unchanged over Spark Connect)."""
    def choose(old):
        n = max(2, int(per_core) * int(spark.sparkContext.defaultParallelism))
        return str(n) if n < int(old or 200) else None
    return _session_conf(spark, "spark.sql.shuffle.partitions", choose)


# Rows per Arrow batch sent to the fused scan's tasks: about this many bytes of features per
# batch, between 1,024 and 100,000 rows. Spark's default of 10,000 rows makes small batches at
# 50 covariates (measured 1M rows x 50, local[2]: the conversion took 20-30% less time with
# 100,000-row batches) and 160 MB ones at 2,000 covariates (held twice per task, as Arrow in
# the JVM and as numpy in the Python worker): the rows adapt to the width. An unlimited
# setting (<= 0) is left alone.
_SCAN_BATCH_BYTES = 32 << 20


def scan_batch_rows(width: int) -> int:
    """Rows per batch of the fused scan for ``width`` features (about ``_SCAN_BATCH_BYTES``)."""
    return min(100_000, max(1024, _SCAN_BATCH_BYTES // (8 * max(int(width), 1))))


def _arrow_batch_rows(spark, width: int):
    def choose(old):
        cur = int(old or 10000)
        if cur <= 0:                       # unlimited already
            return None
        rows = scan_batch_rows(width)
        return str(rows) if rows != cur else None
    return _session_conf(spark, "spark.sql.execution.arrow.maxRecordsPerBatch", choose)


def combine_scan_stats(summaries, n_stats: int) -> dict:
    """Sum the per-partition statistics vectors of the fused scan (``blockstore.STAT_HEAD`` /
    ``STAT_COLS``) in partition order: counts add, min/max combine, moments merge by Chan's
    formula. Returns the head counts and per-covariate arrays (``mean``/``sd`` population)."""
    from segmentation.data.blockstore import STAT_COLS, STAT_HEAD, merge_moments

    m, h = int(n_stats), len(STAT_HEAD)
    out = {k: 0 for k in STAT_HEAD}
    null, nonfinite = np.zeros(m), np.zeros(m)
    mn, mx = np.full(m, np.inf), np.full(m, -np.inf)
    n, mean, m2 = 0, np.zeros(m), np.zeros(m)
    for r in summaries:
        if not r["stats"]:
            continue
        v = np.frombuffer(r["stats"], dtype=np.float64)
        assert len(v) == h + len(STAT_COLS) * m, "statistics of another width"
        head = v[:h]
        cols = dict(zip(STAT_COLS, v[h:].reshape(len(STAT_COLS), m)))
        for k, x in zip(STAT_HEAD, head):
            out[k] += int(x)
        null += cols["null"]
        nonfinite += cols["nonfinite"]
        np.minimum(mn, cols["min"], out=mn)
        np.maximum(mx, cols["max"], out=mx)
        n, mean, m2 = merge_moments(n, mean, m2, int(head[0]), cols["mean"], cols["m2"])
    out.update(null=null.astype(np.int64), nonfinite=nonfinite.astype(np.int64), min=mn, max=mx,
               mean=mean, sd=np.sqrt(np.maximum(m2, 0.0) / n) if n else np.full(m, np.nan))
    return out


def scan_and_validate(df, *, user_col: str, creative_col: str, response_col: str, covariates,
                      categorical=(), segments: dict[str, list[str]], control: str | None = None,
                      standardize: bool = True, max_levels: int = 200, creatives,
                      n_folds: int = 1, seed: int = 0, sink, timings: dict | None = None,
                      reader: str = "spark", source_format: str | None = None,
                      choices: dict | None = None):
    """Validate, encode and convert to blocks with ONE read of the covariates; return
    ``(report, encoding, manifest)`` or None when the fused scan does not apply (a categorical
    column with more than ``max_levels`` levels: the caller takes the two-step path, which
    raises the same errors in the same order).

    Same checks, errors, warnings and report as :func:`validate_and_encode` (the problem list
    is built by the same code, :func:`_judge`), the same encoding up to float rounding of the
    moments (computed in float64 by numpy per Arrow batch and merged exactly as a pairwise
    update, instead of Spark's ``avg``/``stddev_pop``), and the same blocks as
    ``write_blocks``/``cache_blocks`` of ``Encoding.feature_columns`` given that encoding.

    Spark jobs: the distinct user count (a shuffle of the user ids only; with the direct
    reader, ``parquet_tasks.count_users``: ids read by pyarrow, shuffled as blobs; with the
    direct reader and block files, no job of its own: the scan's tasks leave their distinct ids
    in the block store, hashed into buckets, and one small job counts each bucket after the
    scan, ``parquet_tasks.UserSpill``), one ``mapInArrow``
    over ``scan_frame`` (plain columns; the task assembles each Arrow batch into a row-major
    numpy matrix, a null read as NaN) in which each task measures its rows (counts per creative and fold,
    positives, bad responses, null/unknown creatives, null users, per covariate null and
    NaN/infinite counts, min, max, mean and sum of squared deviations) and turns them into raw
    (unstandardised) sorted blocks held by ``sink`` (``blockstore.FileSink`` or
    ``blockcache.CacheSink``), then ``sink.finish`` (one job rescaling the block files in
    place; nothing for the cache, which rescales when a worker loads a block). Categorical
    columns add one small ``groupBy`` first (levels and null counts). Only when a check fails:
    a query for the names of creatives with no segment, and one for response examples.
    Anything the scan stored is removed before an error propagates.

    The scan's input: ``scan_frame`` through Spark, or the same batches built by pyarrow in
    the tasks from the Parquet files (``parquet_tasks``) when ``reader`` ("spark", "auto" or
    "arrow", ``data.reader``) allows and ``source_format`` (the format the caller read ``df``
    from itself; None for a DataFrame handed in) is Parquet: see
    :func:`parquet_tasks.plan_direct_read`. ``choices``, when given, receives ``reader``
    ("arrow" or "spark") and ``reader_reason``.

    ``timings``, when given, receives the seconds of each step (``levels``, ``users``,
    ``plan`` (the direct reader's Parquet footers), ``scan``, ``checks``, ``finish``).
    """
    import time

    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from segmentation.data.encode import (categorical_statistics, encoding_from_statistics,
                                          reference_and_levels)

    from segmentation.data.parquet_tasks import ScanSpec, plan_direct_read

    tm = timings if timings is not None else {}
    clock = time.perf_counter
    covariates = [str(c) for c in covariates]
    categorical = [str(c) for c in categorical]
    creatives = [str(c) for c in creatives]
    owner = validate_segments(segments, control)
    types = _check_schema(df, user_col, creative_col, response_col, covariates, categorical)
    direct, why = plan_direct_read(
        df.sparkSession, df, fmt=source_format, reader=reader,
        own_read=source_format is not None, types=types,
        spec_columns=dict(user=[user_col], creative=[creative_col], response=[response_col],
                          covariates=covariates, categorical=categorical))
    reason = direct.why if direct is not None else why
    log.info("fused scan input: %s (%s)", "pyarrow in the tasks" if direct else "Spark", reason)
    if choices is not None:
        choices.update(reader="arrow" if direct is not None else "spark", reader_reason=reason)
    t = clock()
    if direct is not None:
        direct.plan()               # first: a file pyarrow cannot read is named before any scan
    tm["plan"] = clock() - t

    t = clock()
    level_counts: dict[str, dict[str, int]] = {c: {} for c in categorical}
    null_counts: dict[str, int] = {c: 0 for c in categorical}
    levels: dict[str, list[str]] = {}
    if categorical:
        level_counts, null_counts, _ = categorical_statistics(df, categorical)
        if any(len(v) > max_levels for v in level_counts.values()):
            return None
        levels = {c: reference_and_levels(level_counts[c])[1] for c in categorical}
    tm["levels"] = clock() - t

    # (run beside the scan in a thread, the count waited for task slots and slowed the scan:
    # 1M rows x 50, local[2], 14.5-20 s against 13-15 s in sequence)
    t = clock()
    id_kind = "string" if types[user_col].typeName() == "string" else "integer"
    spill_dir = getattr(sink, "spill_dir", None)
    spill = None
    if direct is not None and spill_dir is not None:
        # counted after the scan, from the ids its tasks leave beside the blocks
        spill = direct.user_spill(spill_dir, user_col, id_kind, sink.block_dir)
        n_users = None
    elif direct is not None:
        with task_errors_unwrapped():
            n_users = direct.count_users(user_col, id_kind)
    else:
        n_users = count_users(df, user_col)
    tm["users"] = clock() - t
    t = clock()
    width = len(covariates) + sum(len(v) for v in levels.values())
    if direct is not None:
        spec = ScanSpec(user_col=user_col, creative_col=creative_col, response_col=response_col,
                        response_kind=("boolean" if isinstance(types[response_col], T.BooleanType)
                                       else "number"),
                        covariates=tuple(covariates),
                        categorical=tuple((c, tuple(levels.get(c, []))) for c in categorical),
                        creatives=tuple(creatives), n_folds=int(n_folds), seed=int(seed),
                        batch_rows=scan_batch_rows(width))
        frame = direct.frame(spec, users=spill)
    else:
        frame = scan_frame(df, user_col=user_col, creative_col=creative_col,
                           response_col=response_col, covariates=covariates,
                           categorical=categorical, levels=levels, creatives=creatives,
                           n_folds=n_folds, seed=seed, types=types)
    K = len(creatives)
    try:
        with _arrow_batch_rows(df.sparkSession, width):
            with task_errors_unwrapped():
                summaries = sink.run(frame, n_stats=len(covariates), n_creatives=K, n_folds=n_folds)
        tm["scan"] = clock() - t
        if spill is not None:
            t = clock()
            with task_errors_unwrapped():
                n_users = direct.count_spilled_users(spill)
            tm["users"] += clock() - t
        t = clock()
        st = combine_scan_stats(summaries, len(covariates))
        n_rows = int(st["n_rows"])
        if n_rows == 0:
            raise DataValidationError("exposure data failed validation: the exposure table is empty (0 rows)")
        counts = np.zeros(K * n_folds, dtype=np.int64)
        positives = np.zeros(K * n_folds, dtype=np.int64)
        for r in summaries:
            counts += np.asarray(r["counts"], dtype=np.int64)
            positives += np.asarray(r["positives"], dtype=np.int64)
        per_c = counts.reshape(n_folds, K).sum(axis=0)
        pos_c = positives.reshape(n_folds, K).sum(axis=0)
        groups: dict = {creatives[i]: {"n": int(per_c[i]), "pos": int(pos_c[i])}
                        for i in range(K) if per_c[i] > 0}
        if st["null_creative"]:
            groups[None] = {"n": int(st["null_creative"]), "pos": 0}
        if st["unknown_creative"]:
            # only on the error path: the names of the creatives with no index, and their rows
            name = col_ref(creative_col).cast("string")
            extra = df.where(col_ref(creative_col).isNotNull() & ~name.isin(*creatives)) \
                .groupBy(name.alias(_CREATIVE)).agg(F.count(F.lit(1)).alias("n")).collect()
            for r in extra:
                groups[r[_CREATIVE]] = {"n": int(r["n"]), "pos": 0}
        total = {"n": n_rows, "null_user": int(st["null_user"]), "bad_resp": int(st["bad_response"])}
        for k in range(len(covariates)):
            total[f"bad_x{k}"] = int(st["null"][k] + st["nonfinite"][k])
            lo, hi = float(st["min"][k]), float(st["max"][k])
            valid = math.isfinite(lo) and math.isfinite(hi)
            total[f"min_x{k}"], total[f"max_x{k}"] = (lo, hi) if valid else (None, None)
        for k, c in enumerate(categorical):
            total[f"null_c{k}"] = int(null_counts[c])
            lv = sorted(level_counts[c])
            total[f"min_c{k}"], total[f"max_c{k}"] = (lv[0], lv[-1]) if lv else (None, None)

        resp = col_ref(response_col)
        if isinstance(types[response_col], T.BooleanType):
            bad_resp = resp.isNull()
        else:
            bad_resp = resp.isNull() | ~resp.isin(0, 1)

        def examples():
            return [r[0] for r in
                    df.where(bad_resp).select(resp.cast("string")).distinct().limit(5).collect()]

        report = _judge(groups, total, n_users=n_users, owner=owner, user_col=user_col,
                        creative_col=creative_col, response_col=response_col,
                        covariates=covariates, categorical=categorical, segments=segments,
                        control=control, response_examples=examples)
        moments = {c: ((float(st["mean"][k]), float(st["sd"][k])) if total[f"bad_x{k}"] == 0 else
                       (float("nan"), float("nan")))
                   for k, c in enumerate(covariates)}
        encoding = encoding_from_statistics(covariates, categorical, moments, level_counts, n_rows,
                                            standardize=standardize, max_levels=max_levels)
        width = 1 + len(covariates) + sum(len(levels.get(c, [])) for c in categorical)
        if encoding.n_features != width:
            raise RuntimeError(f"encoding has {encoding.n_features} features, the scanned blocks {width}")
        tm["checks"] = clock() - t
        t = clock()
        manifest = sink.finish(center=encoding.center, scale=encoding.scale, n_creatives=K,
                               n_folds=n_folds, feature_names=encoding.feature_names)
        tm["finish"] = clock() - t
    except BaseException:
        sink.abort()
        raise
    return report, encoding, manifest
