"""Reading exposure rows from Parquet, CSV, Delta or a metastore table.

The reader does no validation beyond "the source exists": column checks live in
``segmentation.data.validate``. Formats:

- ``parquet``: a Parquet file or directory of Parquet files (Spark's ``read.parquet``).
- ``csv``: a CSV file or directory, read with ``header=true`` and ``inferSchema=true``.
- ``delta``: a Delta Lake directory (needs the Delta package on the Spark classpath).
- ``table``: a metastore name such as ``tbl``, ``db.tbl`` or ``catalog.db.tbl`` (no slash).
"""
from __future__ import annotations

import os
import re

from segmentation.errors import DataValidationError

FORMATS = ("parquet", "csv", "delta", "table")

_SUFFIXES = {
    ".parquet": "parquet",
    ".parq": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".csv.bz2": "csv",
    ".tsv": "csv",
}
_TABLE_NAME = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*){0,2}$|^`[^`]+`(\.`[^`]+`){0,2}$")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
DELTA_HINT = ("Delta needs the Delta Lake connector on the Spark classpath, as Databricks runtimes "
              "have it; on plain Spark add --packages io.delta:delta-spark_2.13:<the release for "
              "your Spark version> with --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension "
              "--conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog")


def _is_local(source: str) -> bool:
    """True for plain paths and ``file:`` URIs (the ones this process can check with os)."""
    return not _SCHEME.match(source) or source.startswith("file:")


def _local_path(source: str) -> str:
    """``source`` without a ``file:`` scheme."""
    if source.startswith("file://"):
        return source[len("file://"):]
    if source.startswith("file:"):
        return source[len("file:"):]
    return source


def infer_format(source: str) -> str:
    """Guess the format of ``source`` from its suffix or, for a local directory, its content.

    Order of the rules:

    1. a known suffix (``.parquet``/``.pq``/``.parq`` -> parquet, ``.csv``/``.csv.gz``/``.tsv``
       -> csv);
    2. a local directory: ``_delta_log/`` inside -> delta; otherwise the suffix of the first
       data file found (parquet or csv);
    3. a name with no slash and no URI scheme that is not an existing path, such as
       ``db.tbl`` -> table;
    4. anything else (for example a remote directory without suffix) -> parquet.

    Raises ``DataValidationError`` when a local directory holds neither Parquet, CSV nor Delta
    files.
    """
    s = str(source).rstrip("/")
    lower = s.lower()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return _SUFFIXES[suffix]
    if _is_local(s):
        path = _local_path(s)
        if os.path.isdir(path):
            if os.path.isdir(os.path.join(path, "_delta_log")):
                return "delta"
            found = _first_data_suffix(path)
            if found is None:
                raise DataValidationError(
                    f"cannot infer the format of directory '{source}': it holds no Parquet, CSV "
                    f"or Delta files; pass the format explicitly (one of {list(FORMATS)})"
                )
            return found
        if not os.path.exists(path) and "/" not in s and "\\" not in s and _TABLE_NAME.match(s):
            return "table"
    return "parquet"


def _first_data_suffix(path: str) -> str | None:
    """Format of the first data file below ``path`` (hidden and ``_``-prefixed entries skipped)."""
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        for name in sorted(files):
            if name.startswith((".", "_")):
                continue
            low = name.lower()
            for suffix in sorted(_SUFFIXES, key=len, reverse=True):
                if low.endswith(suffix):
                    return _SUFFIXES[suffix]
    return None


def read_exposures(spark, source: str, fmt: str | None = None):
    """Read the exposure rows at ``source`` as a Spark DataFrame.

    ``fmt`` is one of ``parquet``, ``csv``, ``delta``, ``table``; when ``None`` it comes from
    :func:`infer_format`. A local path that does not exist, a remote path Spark cannot find, or a
    table missing from the metastore raises ``DataValidationError`` naming the source. The read
    is lazy apart from what Spark itself needs (CSV schema inference scans the file once).
    """
    source = str(source)
    fmt = (fmt or infer_format(source)).lower()
    if fmt not in FORMATS:
        raise DataValidationError(f"unknown exposure format '{fmt}': expected one of {list(FORMATS)}")
    if fmt != "table" and _is_local(source) and not os.path.exists(_local_path(source)):
        raise DataValidationError(f"exposure path does not exist: '{source}'")

    from pyspark.errors import AnalysisException

    try:
        if fmt == "table":
            return spark.read.table(source)
        if fmt == "parquet":
            return spark.read.parquet(source)
        if fmt == "csv":
            return spark.read.options(header="true", inferSchema="true").csv(source)
        return spark.read.format("delta").load(source)
    except Exception as exc:  # AnalysisException, or Py4JJavaError for a missing data source
        text = str(exc)
        if not isinstance(exc, AnalysisException) and "DATA_SOURCE_NOT_FOUND" not in text:
            raise
        if fmt == "table" and "DATA_SOURCE_NOT_FOUND" not in text:
            raise DataValidationError(f"exposure table '{source}' not found: {_first_line(text)}") from exc
        if "PATH_NOT_FOUND" in text or "Path does not exist" in text:
            raise DataValidationError(f"exposure path does not exist: '{source}'") from exc
        if "DATA_SOURCE_NOT_FOUND" in text:
            raise DataValidationError(
                f"cannot read '{source}' as {fmt}: {_first_line(text)}"
                + (f" ({DELTA_HINT})" if fmt == "delta" else "")
            ) from exc
        raise DataValidationError(f"cannot read exposures from '{source}' as {fmt}: {_first_line(text)}") from exc


def _first_line(text: str) -> str:
    """The most telling line of a Spark error: the one with an ``[ERROR_CLASS]``, else the first."""
    m = re.search(r"\[[A-Z][A-Z_.]+\][^\n]*", text)
    if m:
        return m.group(0).strip()
    return text.strip().splitlines()[0] if text.strip() else text


def read_segment_mapping(spark, source: str) -> dict[str, list[str]]:
    """segment -> creatives from a CSV file (``creative,segment``, as ``segments_file``) or a
    table/view with columns ``creative`` and ``segment`` (collected: one row per creative)."""
    from segmentation.config import read_segments_file, validate_segment_mapping

    source = str(source)
    if source.lower().endswith(".csv"):
        return read_segments_file(source, None)
    df = read_exposures(spark, source, "table" if infer_format(source) == "table" else None)
    missing = [c for c in ("creative", "segment") if c not in df.columns]
    if missing:
        raise DataValidationError(f"segment mapping '{source}' lacks column(s) {missing} "
                                  f"(has {sorted(df.columns)})")
    mapping: dict[str, list[str]] = {}
    for r in df.select("creative", "segment").distinct().orderBy("segment", "creative").collect():
        if r["creative"] is None or r["segment"] is None:
            raise DataValidationError(f"segment mapping '{source}' has a row with a null creative or segment")
        mapping.setdefault(str(r["segment"]), []).append(str(r["creative"]))
    try:
        return validate_segment_mapping(mapping, None)
    except ValueError as e:
        raise DataValidationError(f"segment mapping '{source}': {e}") from None
