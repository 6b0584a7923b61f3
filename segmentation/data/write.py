"""Writing a result DataFrame (the segment assignments) to a path or a metastore table.

Targets:

- a path (``parquet``, the default, or ``delta``): without a run date the whole directory is
  replaced (local paths: written beside it, then renamed into place; other file systems:
  Spark's overwrite commit); with a run date the directory is partitioned by ``run_date`` and
  only that date's partition is replaced: on a local file system written beside it and swapped in
  with one atomic rename exchange (``segmentation/atomic.py``), elsewhere through Spark's dynamic
  partition overwrite for Parquet (new files are staged, then the old partition directory is
  swapped out at job commit), and ``replaceWhere`` for Delta (one transaction);
- a table name (``db.tbl``, ``catalog.schema.tbl``: a dotted name with no slash that is not an
  existing path; a bare ``tbl`` only with the format ``table``): created with ``saveAsTable`` in the
  session's default table format (Parquet on plain Spark, Delta on Databricks), partitioned by
  ``run_date`` when a run date is given. An existing table receives an ``insertInto`` with
  dynamic partition overwrite: only the run date's partition is replaced (one transaction on
  Delta), or the whole table without a run date. The table's columns must match.

A retry or backfill of the same run date therefore leaves exactly one copy of that date's rows.

What a replacement guarantees when the writing job fails part way:

- local paths (and ``file:``), with or without a run date: atomic; the new rows are written to a
  staging sibling and swapped in by one rename exchange (``segmentation/atomic.py``), so readers
  and a failed job see the complete old output or the complete new one;
- Delta (path or table): atomic; one transaction (``replaceWhere`` for a run date, ``overwrite``
  otherwise);
- Parquet on other file systems or a Parquet table, with a run date: Spark's dynamic partition
  overwrite writes the new files under a staging directory and replaces the partition only at
  job commit, so a failed job leaves the old partition; the swap itself is not one operation
  (a reader during the commit may see the date missing);
- Parquet on other file systems or a Parquet table, *without* a run date: not atomic. Spark's
  static overwrite (``mode("overwrite").save``, ``insertInto(overwrite=True)``) deletes the old
  files before the job writes the new ones: a failed job leaves the target empty or partial
  (rerun it). There is no atomic directory rename on object stores and no table swap in Spark's
  catalog API; write with a run date, or use Delta, where that matters.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re

from segmentation.data.read import DELTA_HINT, _first_line, _is_local, _local_path, infer_format
from segmentation.errors import ConfigError, DataValidationError

RUN_DATE_COL = "run_date"
OUTPUT_FORMATS = ("parquet", "delta", "table")
_URI = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def parse_run_date(value) -> _dt.date | None:
    """``YYYY-MM-DD`` (a ``date`` passes through) -> date; None stays None."""
    if value is None or value == "":
        return None
    if isinstance(value, _dt.date):
        return value
    try:
        return _dt.date.fromisoformat(str(value).strip())
    except ValueError:
        raise ConfigError(f"run date {value!r} is not a date in YYYY-MM-DD form") from None


def output_format(target: str, fmt: str | None = None) -> str:
    """``parquet``, ``delta`` or ``table`` for ``target`` (given, or inferred from its name)."""
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in OUTPUT_FORMATS:
            raise ConfigError(f"output format {fmt!r}: expected one of {list(OUTPUT_FORMATS)}")
        return fmt
    s = str(target).rstrip("/")
    if _is_local(s) and not os.path.exists(_local_path(s)):
        # a qualified name (db.tbl, catalog.schema.tbl) is a table; a bare word stays a local
        # directory, as it always was for assign --output (--output-format table for a bare name)
        return "table" if "." in s and infer_format(s) == "table" else "parquet"
    try:
        found = infer_format(s)
    except DataValidationError:          # an existing directory holding no data files yet
        return "parquet"
    return found if found in OUTPUT_FORMATS else "parquet"


def write_output(df, target: str, fmt: str | None = None, run_date=None) -> str:
    """Write ``df`` to ``target``; returns a one-line description of what was written.

    ``run_date`` (``YYYY-MM-DD`` or a date): add a ``run_date`` column and replace only that
    partition of the target. Raises ``DataValidationError`` when an existing table's columns or
    partitioning do not fit, or when Delta is asked for and Spark lacks the Delta connector.
    """
    from pyspark.sql import functions as F

    day = parse_run_date(run_date)
    fmt = output_format(target, fmt)
    if day is not None:
        if RUN_DATE_COL in df.columns:
            raise DataValidationError(f"the output already has a column {RUN_DATE_COL!r}; it is "
                                      "added from the run date")
        df = df.withColumn(RUN_DATE_COL, F.lit(day.isoformat()).cast("date"))
    if fmt == "table":
        return _write_table(df, target, day)
    return _write_path(df, target, fmt, day)


# ---- paths --------------------------------------------------------------------------------
def _write_path(df, path: str, fmt: str, day: _dt.date | None) -> str:
    if day is None:
        if fmt == "parquet" and (not _URI.match(path) or path.startswith("file://")):
            from segmentation.policy.assign import write_parquet_atomic

            write_parquet_atomic(df, path)
        else:
            _delta_guard(lambda: df.write.format(fmt).mode("overwrite").save(path), path)
        return f"{fmt} directory {path}"
    if _is_local(path):
        _check_partitioned_dir(_local_path(path))
        if fmt == "parquet":
            _replace_local_partition(df, os.path.abspath(_local_path(path)), day)
            return f"{fmt} directory {path}, partition {RUN_DATE_COL}={day.isoformat()}"
    w = df.write.format(fmt).mode("overwrite").partitionBy(RUN_DATE_COL)
    if fmt == "delta":
        w = w.option("replaceWhere", f"{RUN_DATE_COL} = DATE'{day.isoformat()}'")
    else:
        w = w.option("partitionOverwriteMode", "dynamic")
    _delta_guard(lambda: w.save(path), path)
    return f"{fmt} directory {path}, partition {RUN_DATE_COL}={day.isoformat()}"


def _replace_local_partition(df, path: str, day: _dt.date) -> None:
    """Local Parquet: write the date's rows under a hidden staging directory inside ``path``, then
    swap its ``run_date=`` directory in with one atomic rename exchange (``atomic.replace_dir``):
    at every instant the partition is the complete old one or the complete new one (Spark's
    dynamic partition overwrite deletes the old partition before renaming the new one in, so a
    reader or a crash in between sees the date missing). An empty result leaves an empty
    partition: the date's rows are replaced by none."""
    import shutil

    from segmentation.atomic import replace_dir
    from segmentation.atomic import staging_dir

    part = f"{RUN_DATE_COL}={day.isoformat()}"
    os.makedirs(path, exist_ok=True)
    stage = staging_dir(os.path.join(path, part))    # hidden, with an owner record (swept if killed)
    try:
        df.write.mode("errorifexists").partitionBy(RUN_DATE_COL).parquet(os.path.join(stage, "data"))
        written = os.path.join(stage, "data", part)
        os.makedirs(written, exist_ok=True)
        replace_dir(written, os.path.join(path, part))
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _check_partitioned_dir(path: str) -> None:
    """A local directory receiving one run date's partition must hold nothing but
    ``run_date=...`` partitions (and Spark's/Delta's own hidden entries)."""
    if not os.path.isdir(path):
        if os.path.exists(path):
            raise DataValidationError(f"output path {path} exists and is not a directory")
        return
    stray = sorted(n for n in os.listdir(path)
                   if not n.startswith((".", "_")) and not n.startswith(f"{RUN_DATE_COL}="))
    if stray:
        raise DataValidationError(
            f"output path {path} holds {stray[:3]} besides {RUN_DATE_COL}=... partitions: it was "
            f"written without a run date; give a new path or drop the run date")


def _delta_guard(write, target: str) -> None:
    try:
        write()
    except Exception as exc:  # noqa: BLE001 - only the missing-connector case is rewritten
        if "DATA_SOURCE_NOT_FOUND" in str(exc) and "delta" in str(exc).lower():
            raise DataValidationError(f"cannot write '{target}' as delta: {_first_line(str(exc))} "
                                      f"({DELTA_HINT})") from exc
        raise


# ---- tables -------------------------------------------------------------------------------
def _write_table(df, name: str, day: _dt.date | None) -> str:
    spark = df.sparkSession
    if not spark.catalog.tableExists(name):
        w = df.write.mode("error")          # "errorifexists" is unknown to the Spark Connect client
        if day is not None:
            w = w.partitionBy(RUN_DATE_COL)
        _delta_guard(lambda: w.saveAsTable(name), name)
        return f"new table {name}" + (f", partition {RUN_DATE_COL}={day.isoformat()}" if day else "")
    columns = spark.catalog.listColumns(name)
    names = [c.name for c in columns]
    parts = [c.name for c in columns if c.isPartition]
    if day is not None and parts != [RUN_DATE_COL]:
        raise DataValidationError(
            f"table {name} is partitioned by {parts or 'nothing'}, not by {RUN_DATE_COL!r}: a run "
            f"date replaces one {RUN_DATE_COL} partition; write to a new table or drop the run date")
    missing = [c for c in names if c not in df.columns]
    extra = [c for c in df.columns if c not in names]
    if missing or extra:
        diff = "; ".join(x for x in (f"the output lacks {missing}" if missing else "",
                                     f"the output adds {extra}" if extra else "") if x)
        raise DataValidationError(f"table {name} has columns {names}: {diff}; write to a new "
                                  "table or drop this one")
    with _partition_overwrite("dynamic" if day is not None else "static", spark):
        df.select(*names).write.insertInto(name, overwrite=True)
    return f"table {name}" + (f", partition {RUN_DATE_COL}={day.isoformat()} replaced" if day
                              else ", replaced")


@contextlib.contextmanager
def _partition_overwrite(mode: str, spark):
    """``spark.sql.sources.partitionOverwriteMode`` set for one write (``insertInto`` ignores
    the writer option), then restored."""
    key = "spark.sql.sources.partitionOverwriteMode"
    before = spark.conf.get(key, None)
    spark.conf.set(key, mode)
    try:
        yield
    finally:
        if before is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, before)
