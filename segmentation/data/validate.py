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
"""
from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass, field

from segmentation.data.encode import col_ref, numeric_type_names
from segmentation.errors import DataValidationError

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

    problems: list[str] = []
    warnings: list[str] = []
    if None in groups:
        problems.append(f"creative column '{creative_col}' has {groups[None]['n']:,} null rows")
    if total["null_user"]:
        problems.append(f"user column '{user_col}' has {total['null_user']:,} null rows")
    if total["bad_resp"]:
        examples = [
            r[0] for r in df.where(bad_resp).select(resp.cast("string")).distinct().limit(5).collect()
        ]
        examples = ["null" if v is None else v for v in examples]
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
        n_rows=n_rows,
        n_users=n_users,
        rows_per_creative={c: int(present[c]["n"]) for c in sorted(present)},
        positives_per_creative={c: int(present[c]["pos"]) for c in sorted(present)},
        constant_covariates=constant,
        warnings=warnings,
    ), mom
