"""Parquet read by pyarrow inside Spark tasks: the fused scan's input without Spark's hand-off.

``prepare()``'s fused scan (``validate.scan_and_validate``) needs every used value of every
row in a Python worker once. Through Spark (``mapInArrow`` over ``validate.scan_frame``) the
JVM decodes the Parquet pages, turns the columns into rows, then the rows into Arrow batches
for the worker: on this 2-core machine that hand-off alone costs about 2x an aggregate scan of
the same columns (``benchmarks/results/prepare_scan.md``). Here the tasks are Spark's, but
each one opens its share of the Parquet files with pyarrow and builds the scan frame's batches
itself (columnar all the way), so the same sink functions (``FileSink``/``CacheSink``) receive
the same batches: ``y``, ``c``, ``f``, ``nu``, ``x0..`` as defined by ``scan_frame``:

- ``y`` (int8): 1 for a positive response, 0 for a negative, -1 when the response is null or
  (for numbers) not 0/1; a boolean response is true/false, null -> -1;
- ``c`` (int32): the creative's index in ``creatives`` (its value as a string), -1 when it
  has none, -2 for null;
- ``f`` (int32): ``pmod(xxhash64(user, seed), n_folds)``, computed by
  ``spark_hash.spark_fold`` bit for bit as Spark computes ``folds.fold_expression``;
- ``nu`` (bool): the user id is null;
- ``x0..``: each numeric covariate as double (null stays null), then one 0.0/1.0 indicator
  per categorical level (a null level is 0.0).

The footers (row groups and their rows) are read by this process when it sees the files
(``file:`` URIs; over Spark Connect the server listed them, so the client may not), else by one
Spark job over the files. Then the scan runs one task per contiguous run of row groups,
balanced by rows (about as many tasks as Spark's own reader would make: one per
``maxPartitionBytes`` of file, at least the default parallelism). Jobs run over
``spark.range(n, numPartitions=n)``, task i taking its share from the closure, so they work on
any cluster and over Spark Connect.

When it applies (:func:`plan_direct_read`): the input is a Parquet path that ``prepare()``
reads itself (a DataFrame handed in may carry filters: it goes through Spark), every file Spark
lists is one pyarrow can open (``file:`` URIs, a local disk or a mount every executor shares,
as Spark itself needs; ``data.reader: arrow`` also tries other schemes pyarrow knows, with its
own credentials), no used column is a partition directory, and the used columns have the
types handled above (string or integer user and creative ids, a numeric or boolean response,
integer or floating covariates, string categoricals). Otherwise the scan goes through Spark,
with the reason logged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from urllib.parse import quote, unquote

from segmentation.errors import DataValidationError

READERS = ("auto", "spark", "arrow")

# Spark type name (DataType.typeName()) -> role support in the direct reader
_INT_TYPES = ("byte", "short", "integer", "long")
_FLOAT_TYPES = ("float", "double")
_ID_TYPES = ("string",) + _INT_TYPES
_SCHEMES = {"s3a": "s3", "s3n": "s3"}         # Hadoop's names for schemes pyarrow calls otherwise


@dataclass(frozen=True)
class ScanSpec:
    """What a task needs to build ``scan_frame``'s batches from the files' columns."""

    user_col: str
    creative_col: str
    response_col: str
    response_kind: str                 # "boolean" or "number"
    covariates: tuple
    categorical: tuple                 # ((column, (level, ...)), ...)
    creatives: tuple
    n_folds: int
    seed: int
    batch_rows: int

    @property
    def columns(self) -> list[str]:
        return [self.user_col, self.creative_col, self.response_col, *self.covariates,
                *(c for c, _ in self.categorical)]


@dataclass
class DirectRead:
    """The plan of a direct read: the Parquet files Spark lists for the input and the
    session; :meth:`frame` gives the stand-in for ``scan_frame`` the sinks run on."""

    spark: object
    files: list
    why: str
    units: list | None = None          # per task: [(path, [row group, ...], rows), ...]

    def plan(self) -> list:
        """The tasks' row groups (the footer job, once)."""
        if self.units is None:
            self.units = plan_units(self.spark, self.files)
        return self.units

    def frame(self, spec: ScanSpec, users: "UserSpill | None" = None) -> "DirectScanFrame":
        """The scan's input; with ``users``, each scan task also leaves its distinct user ids
        in ``users.directory`` for :meth:`count_spilled_users` (no second read of the ids)."""
        return DirectScanFrame(self.spark, self.plan(), spec, users)

    def user_spill(self, directory: str, user_col: str, kind: str, block_dir: str) -> "UserSpill":
        rows = sum(int(r) for u in self.plan() for _, _, r in u)
        return UserSpill(directory, user_col, kind, n_buckets(self.spark, rows), block_dir)

    def count_spilled_users(self, users: "UserSpill") -> int:
        """The distinct users the scan's tasks left in ``users.directory`` (then removed)."""
        return count_spilled_users(self.spark, users, len(self.plan()))

    def count_users(self, user_col: str, kind: str) -> int:
        """Exact number of distinct non-null values of ``user_col`` (``kind``: "string" or
        "integer", its Spark type), read by pyarrow in the tasks: see :func:`count_users`."""
        return count_users(self.spark, self.plan(), user_col, kind)


class DirectScanFrame:
    """Stands in for ``validate.scan_frame``'s DataFrame in ``sink.run``: ``mapInArrow(task,
    schema)`` runs ``task`` over the same batches, read by pyarrow in the tasks."""

    def __init__(self, spark, units: list, spec: ScanSpec, users: "UserSpill | None" = None):
        self.spark, self.units, self.spec, self.users = spark, units, spec, users

    def mapInArrow(self, task, schema):          # noqa: N802 - the DataFrame method it mirrors
        n = len(self.units)
        fn = partial(_direct_task, units=self.units, spec=self.spec, task=task, users=self.users)
        return self.spark.range(0, n, 1, numPartitions=n).mapInArrow(fn, schema)


def task_ids(batches) -> list[int]:
    """The ids of ``spark.range`` rows a task of these jobs got (its share of the plan), reading
    the whole input: a reused Python worker must not leave batches unread."""
    ids: list[int] = []
    for b in batches:
        ids.extend(int(i) for i in b.column(0).to_pylist())
    return ids


def _direct_task(batches, *, units, spec, task, users=None):
    """mapInArrow body: the task ids this partition got (one), then ``task`` over the scan
    frame's batches of their row groups; with ``users``, the task's distinct user ids are
    written to its bucket files once ``task`` has read every batch."""
    ids = task_ids(batches)
    mine = [u for i in ids for u in units[i]]
    if users is None:
        yield from task(scan_batches_of(mine, spec))
        return
    seen: list = []
    yield from task(scan_batches_of(mine, spec, user_ids=(users, seen)))
    for i in ids:                  # one listing per task id, as the count expects; one id here
        users.write(i, seen if i == ids[0] else [])


# ----------------------------------------------------------------------------- the decision
def plan_direct_read(spark, df, *, fmt: str | None, reader: str, own_read: bool, types: dict,
                     spec_columns: dict) -> tuple[DirectRead | None, str]:
    """``(plan, why)``: a :class:`DirectRead` when the direct reader applies, else None; ``why``
    says which and why. ``reader`` is ``data.reader``: "spark" never, "auto" when every
    condition of the module docstring holds, "arrow" likewise but for any URI scheme, and a
    ``DataValidationError`` naming the condition that fails. ``own_read``: ``prepare()`` read
    ``df`` from the source itself (not a DataFrame handed in). ``types``: column -> Spark type;
    ``spec_columns``: role -> column names (``user``, ``creative``, ``response``,
    ``covariates``, ``categorical``)."""
    if reader not in READERS:
        raise ValueError(f"reader must be one of {list(READERS)}, got {reader!r}")
    if reader == "spark":
        return None, "data.reader is 'spark'"

    def refuse(why: str):
        if reader == "arrow":
            raise DataValidationError(f"config key 'data.reader' is 'arrow' but {why}; use 'auto' "
                                      "or 'spark' to read through Spark")
        return None, why

    if not own_read:
        return refuse("the exposures were handed in as a DataFrame (it may be filtered or derived)")
    if fmt != "parquet":
        return refuse(f"the exposures are {fmt}, not Parquet")
    bad = _unsupported_types(types, spec_columns)
    if bad:
        return refuse("column types the direct reader does not handle: " + ", ".join(bad))
    try:
        files = list(df.inputFiles())
    except Exception as exc:  # noqa: BLE001 - a source Spark cannot list cheaply
        return refuse(f"Spark could not list the input files ({type(exc).__name__})")
    if not files:
        return refuse("Spark lists no input files")
    used = {c.lower() for cols in spec_columns.values() for c in cols}
    for f in files:
        for seg in f.split("/")[:-1]:
            if "=" in seg and seg.split("=", 1)[0].lower() in used:
                return refuse(f"column '{seg.split('=', 1)[0]}' is a partition directory ({f})")
    schemes = sorted({_scheme(f) for f in files})
    remote = [s for s in schemes if s != "file"]
    if reader == "auto" and remote:
        return None, (f"input files are {remote[0]}: URIs (data.reader 'arrow' reads them with "
                      "pyarrow's own filesystems and credentials)")
    try:
        for s in schemes:
            if s != "file":
                _open_fs(next(f for f in files if _scheme(f) == s))
    except Exception as exc:  # noqa: BLE001
        return refuse(f"pyarrow cannot open {schemes} URIs here: {exc}")
    return DirectRead(spark, files, f"{len(files)} Parquet file(s) read by pyarrow in the tasks"), ""


def _unsupported_types(types: dict, spec_columns: dict) -> list[str]:
    """The used columns whose types the tasks do not read as Spark does: strings must have the
    default (binary) collation, since Spark hashes and compares other collations by their
    collation keys."""
    def name(c):
        t = types[c]
        if t.typeName() == "string" and t.simpleString() != "string":
            return t.simpleString()                    # a collated string
        return t.typeName()

    bad = []
    for c in spec_columns["user"] + spec_columns["creative"]:
        if name(c) not in _ID_TYPES:
            bad.append(f"'{c}' ({types[c].simpleString()})")
    for c in spec_columns["response"]:
        if name(c) not in _INT_TYPES + _FLOAT_TYPES + ("boolean",):
            bad.append(f"'{c}' ({types[c].simpleString()})")
    for c in spec_columns["covariates"]:
        if name(c) not in _INT_TYPES + _FLOAT_TYPES:
            bad.append(f"'{c}' ({types[c].simpleString()})")
    for c in spec_columns["categorical"]:
        if name(c) != "string":
            bad.append(f"'{c}' ({types[c].simpleString()})")
    return bad


def _scheme(uri: str) -> str:
    head, sep, _ = uri.partition(":")
    return head.lower() if sep and "/" not in head and len(head) > 1 else "file"


def _arrow_uri(uri: str) -> str:
    """A remote file URI as pyarrow's ``FileSystem.from_uri`` names its scheme (``s3a://`` ->
    ``s3://``)."""
    s = _scheme(uri)
    if s in _SCHEMES:
        return _SCHEMES[s] + uri[len(s):]
    return uri


# ----------------------------------------------------------------------------- planning
def _footer_schema():
    """The footer job's output, as Arrow (the tasks) and as Spark (``mapInArrow``) take it."""
    import pyarrow as pa

    return pa.schema([("path", pa.string()), ("n_rows", pa.list_(pa.int64())),
                      ("file_bytes", pa.int64()), ("error", pa.string())])


def footer(path: str) -> dict:
    """The rows of each row group and the size of one Parquet file; a file pyarrow cannot
    open gives its error (``error``, with the exception's type name in ``kind``)."""
    import pyarrow.parquet as pq

    try:
        fs, p = _open_fs(path)
        size = fs.get_file_info(p).size
        with fs.open_input_file(p) as fh:
            md = pq.ParquetFile(fh).metadata
        return dict(path=path, n_rows=[md.row_group(g).num_rows for g in range(md.num_row_groups)],
                    file_bytes=int(size or 0), error=None)
    except Exception as exc:  # noqa: BLE001 - reported by the driver, naming the file
        return dict(path=path, n_rows=[], file_bytes=0, error=f"{type(exc).__name__}: {exc}",
                    kind=type(exc).__name__)


def _footer_task(batches, *, chunks):
    """mapInArrow body of the footer job: :func:`footer` of each file of this task's chunk."""
    import pyarrow as pa

    rows = [{k: v for k, v in footer(path).items() if k != "kind"}
            for i in task_ids(batches) for path in chunks[i]]
    yield pa.RecordBatch.from_pylist(rows, schema=_footer_schema())


def _driver_footers(files: list) -> dict | None:
    """:func:`footer` of every file, read here (threads) when every file is a ``file:`` URI this
    process sees (Spark listed them here, so on a shared mount it does); None otherwise, and the
    executors read them (:func:`plan_units`'s footer job)."""
    from concurrent.futures import ThreadPoolExecutor

    if any(_scheme(f) != "file" for f in files):
        return None
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        rows = list(pool.map(footer, files))
    if any(r.get("kind") in ("FileNotFoundError", "PermissionError") for r in rows):
        return None
    return {r["path"]: r for r in rows}


def _local_path(uri: str) -> str:
    """The local path of a ``file:`` URI as Spark lists it (``file:/x``, ``file:///x``; spaces
    percent-encoded, other characters such as accents left as they are)."""
    path = uri.split(":", 1)[1] if uri.lower().startswith("file:") else uri
    return unquote("/" + path.lstrip("/"))


def _open_fs(uri: str):
    """(pyarrow filesystem, path) for a file Spark listed."""
    from pyarrow import fs as pafs

    if _scheme(uri) == "file":
        return pafs.LocalFileSystem(), _local_path(uri)
    # pyarrow's URI parser takes ASCII only: percent-encode the rest, keep what is encoded
    return pafs.FileSystem.from_uri(quote(_arrow_uri(uri), safe=":/%?=&@+,;~!$'()*[]#"))


def default_parallelism(spark) -> int:
    """The session's default parallelism (classic: the SparkContext's; over Spark Connect the
    ``spark.default.parallelism`` conf when set, else 2)."""
    try:
        return max(1, int(spark.sparkContext.defaultParallelism))
    except Exception:  # noqa: BLE001 - Spark Connect has no SparkContext
        try:
            return max(1, int(spark.conf.get("spark.default.parallelism", "2")))
        except Exception:  # noqa: BLE001
            return 2


def _max_partition_bytes(spark) -> int:
    """``spark.sql.files.maxPartitionBytes`` (128 MB when unset or unreadable), at least 1 MB."""
    from segmentation.spark_session import conf_bytes

    try:
        size = conf_bytes(spark.conf.get("spark.sql.files.maxPartitionBytes", "128m"))
    except Exception:  # noqa: BLE001 - a session refusing the read
        size = None
    return max(1 << 20, size) if size else 128 << 20


def plan_units(spark, files: list, *, on_driver: bool = True) -> list:
    """Read the footers and cut the row groups into tasks: contiguous runs in file order,
    balanced by rows, as many as ``max(default parallelism, total file bytes /
    spark.sql.files.maxPartitionBytes)`` (Spark's own reader splits about so), at most one per
    row group. The footers are read here when the files are local to this process too
    (:func:`_driver_footers`: no Spark job), else by one Spark job on the executors. A file
    pyarrow cannot open raises ``DataValidationError`` naming it. ``on_driver=False`` always
    takes the Spark job."""
    from segmentation.spark_session import is_connect

    par = default_parallelism(spark)
    # over Spark Connect the server listed the files: a same-named file the client sees could
    # be another one, so the executors read the footers there
    info = _driver_footers(files) if on_driver and not is_connect(spark) else None
    if info is None:
        n_chunks = max(1, min(len(files), par))
        chunks = [files[i::n_chunks] for i in range(n_chunks)]
        from pyspark.sql.pandas.types import from_arrow_schema

        rows = spark.range(0, n_chunks, 1, numPartitions=n_chunks).mapInArrow(
            partial(_footer_task, chunks=chunks), from_arrow_schema(_footer_schema())).collect()
        info = {r["path"]: r for r in rows}
    missing = [f for f in files if f not in info]
    if missing:
        raise RuntimeError(f"the footer job returned {len(info)} of {len(files)} files (e.g. {missing[0]})")
    for f in files:
        if info[f]["error"]:
            raise DataValidationError(f"cannot read the Parquet file '{f}' with pyarrow: "
                                      f"{info[f]['error']} (data.reader: spark reads through "
                                      "Spark instead)")
    groups = [(f, g, int(n)) for f in files for g, n in enumerate(info[f]["n_rows"]) if n > 0]
    if not groups:
        return [[]]
    total_bytes = sum(int(info[f]["file_bytes"]) for f in files)
    n_tasks = max(par, math.ceil(total_bytes / _max_partition_bytes(spark)))
    n_tasks = max(1, min(n_tasks, len(groups)))
    total = sum(n for _, _, n in groups)
    units: list = [[] for _ in range(n_tasks)]
    before = 0
    for f, g, n in groups:
        t = min(n_tasks - 1, int((before + n / 2) * n_tasks // total))
        before += n
        if units[t] and units[t][-1][0] == f:
            units[t][-1][1].append(g)
            units[t][-1][2] += n
        else:
            units[t].append([f, [g], n])
    return [[tuple(x) for x in u] for u in units if u] or [[]]


# ----------------------------------------------------------------------------- the task
def scan_batches_of(units: list, spec: ScanSpec, user_ids=None):
    """Yield ``scan_frame``'s batches for the row groups ``units`` ([(path, [group, ...],
    rows)]), checked by :func:`open_units`. ``user_ids`` (a :class:`UserSpill` and a list):
    each batch's distinct non-null user ids are appended to the list, read as the spill's id
    type (a column that cannot be is named, as :func:`count_users` names it)."""
    for path, pf, groups, names in open_units(units):
        present = [names[c.lower()] for c in spec.columns if c.lower() in names]
        for batch in pf.iter_batches(batch_size=spec.batch_rows, row_groups=groups,
                                     columns=present, use_threads=False):
            if user_ids is not None:
                spill, out = user_ids
                actual = names.get(spec.user_col.lower())
                if actual is not None:
                    out.append(spill.distinct(batch.column(batch.schema.get_field_index(actual)), path))
            yield scan_frame_batch(batch, spec, names, path)


def open_units(units: list):
    """Yield ``(path, ParquetFile, row groups, {lower-case column name: name})`` for each file
    of ``units`` ([(path, [group, ...], rows)]), open while the caller reads it. A file whose
    row groups no longer hold the rows its footer said when the tasks were planned (rewritten
    in between) raises ``DataValidationError`` naming it: a changed input must not be read as
    a partial one."""
    import pyarrow.parquet as pq

    for path, groups, rows in units:
        fs, p = _open_fs(path)
        with fs.open_input_file(p) as fh:
            pf = pq.ParquetFile(fh)
            found = pf.metadata.num_row_groups
            now = sum(pf.metadata.row_group(g).num_rows for g in groups if g < found)
            if max(groups) >= found or now != rows:
                raise DataValidationError(
                    f"Parquet file '{path}' changed while prepare() read it: row groups {groups} "
                    f"held {rows} rows when the tasks were planned, now {now} (of "
                    f"{found} row groups); rerun once the input is complete")
            yield path, pf, groups, {n.lower(): n for n in pf.schema_arrow.names}


def _column(batch, spec_name: str, names: dict, path: str):
    """The column ``spec_name`` of a file's batch (matched case-insensitively, as Spark does);
    all nulls when the file lacks it (Spark reads a missing column as null)."""
    import pyarrow as pa

    actual = names.get(spec_name.lower())
    if actual is None:
        return pa.nulls(batch.num_rows)
    col = batch.column(batch.schema.get_field_index(actual))
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def scan_frame_batch(batch, spec: ScanSpec, names: dict, path: str):
    """One Arrow batch of the file's columns -> one batch of ``scan_frame``'s columns."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from segmentation.data.spark_hash import spark_fold

    resp = _column(batch, spec.response_col, names, path)
    if spec.response_kind == "boolean":
        if pa.types.is_null(resp.type):
            resp = resp.cast(pa.bool_())
        y = pc.if_else(resp, 1, 0)
    else:
        r = _as_float(resp, spec.response_col, path)
        y = pc.if_else(pc.equal(r, 1.0), 1, pc.if_else(pc.equal(r, 0.0), 0, -1))
    y = pc.fill_null(y, -1).cast(pa.int8())

    cr = _column(batch, spec.creative_col, names, path)
    if not pa.types.is_string(cr.type) and not pa.types.is_large_string(cr.type):
        cr = cr.cast(pa.string())
    idx = pc.index_in(cr, value_set=pa.array(list(spec.creatives), pa.string()))
    c = pc.if_else(pc.is_null(cr), -2, pc.fill_null(idx, -1)).cast(pa.int32())

    user = _column(batch, spec.user_col, names, path)
    if pa.types.is_null(user.type):          # a file without the column: null ids, as Spark reads it
        user = user.cast(pa.string())
    f = pa.array(spark_fold(user, spec.n_folds, spec.seed), pa.int32())
    nu = pc.is_null(user)

    cols = [y, c, f, nu]
    for v in spec.covariates:
        cols.append(_as_float(_column(batch, v, names, path), v, path))
    for v, levels in spec.categorical:
        s = _column(batch, v, names, path)
        if not (pa.types.is_string(s.type) or pa.types.is_large_string(s.type)):
            s = s.cast(pa.string())
        for level in levels:
            cols.append(pc.fill_null(pc.equal(s, level), False).cast(pa.float64()))
    return pa.RecordBatch.from_arrays(cols, names=["y", "c", "f", "nu"]
                                      + [f"x{j}" for j in range(len(cols) - 4)])


def _as_float(col, name: str, path: str):
    """``col`` as float64 the way Spark's cast to double does it (integers rounded to the
    nearest double; null stays null)."""
    import pyarrow as pa

    if pa.types.is_float64(col.type):
        return col
    try:
        return col.cast(pa.float64(), safe=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataValidationError(f"column '{name}' in Parquet file '{path}' has type {col.type}, "
                                  f"which cannot be read as a number: {exc}") from None


# ----------------------------------------------------------------------------- distinct users
# Users per bucket of the distinct count: a reducing task holds about this many ids (bounds its
# memory; about 40 MB of short string ids).
USERS_PER_BUCKET = 2_000_000
_BUCKET_SEED = 0x5EED                          # any fixed seed: buckets only group equal ids


def n_buckets(spark, rows: int) -> int:
    """Hash buckets of a distinct count over ``rows`` rows: one reducing task each, holding
    about ``USERS_PER_BUCKET`` ids at most, and at least the default parallelism."""
    return max(default_parallelism(spark), math.ceil(rows / USERS_PER_BUCKET))


def _cast_ids(col, kind: str, user_col: str, path: str):
    import pyarrow as pa

    what = "a string id" if kind == "string" else "an integer id"
    try:
        return col.cast(_id_type(kind))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataValidationError(f"user column '{user_col}' in Parquet file '{path}' has type "
                                  f"{col.type}, which cannot be read as {what}: {exc}") from None


def _bucketed(parts: list, kind: str, n_buckets: int):
    """Yield ``(bucket, distinct ids of the bucket)`` over the id arrays ``parts`` (nulls
    dropped; ``pmod(xxhash64(id), n_buckets)``, so equal ids share a bucket)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from segmentation.data.spark_hash import spark_fold

    typ = _id_type(kind)
    parts = [c for p in parts for c in (p.chunks if isinstance(p, pa.ChunkedArray) else [p]) if len(c)]
    if not parts:
        return
    distinct = pc.drop_null(pc.unique(pa.chunked_array(parts, typ)))
    if not len(distinct):
        return
    bucket = spark_fold(distinct, n_buckets, _BUCKET_SEED)
    order = np.argsort(bucket, kind="stable")
    bucket = bucket[order]
    distinct = distinct.take(pa.array(order))
    cuts = np.flatnonzero(np.diff(bucket)) + 1
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(bucket)]):
        yield int(bucket[a]), distinct.slice(int(a), int(b - a))


def _ipc_bytes(ids) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    part = pa.record_batch([ids], names=["id"])
    with pa.ipc.new_stream(sink, part.schema) as w:
        w.write_batch(part)
    return sink.getvalue().to_pybytes()


def _distinct_count(parts: list, kind: str) -> int:
    """Distinct ids in the id arrays ``parts`` of one bucket (the reducing step of both counts)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return len(pc.unique(pa.chunked_array(parts, _id_type(kind)))) if parts else 0


def _ipc_ids(blob: bytes) -> list:
    import pyarrow as pa

    return pa.ipc.open_stream(blob).read_all().column(0).chunks


@dataclass(frozen=True)
class UserSpill:
    """Where the fused scan's tasks leave their distinct user ids for the count: a directory
    every executor and the driver see (the file store's, which must be shared anyway).
    Task ``t`` writes ``u-<t>-<bucket>.arrow`` per non-empty bucket (Arrow IPC), then
    ``t-<t>.json`` listing them; every file is written under a temporary name and renamed,
    so a retried or speculative attempt replaces it whole with the same content."""

    directory: str
    user_col: str
    kind: str                          # "string" or "integer" (Spark's type of the column)
    n_buckets: int
    block_dir: str                     # the data.block_dir an error names

    def distinct(self, col, path: str):
        """One batch's distinct ids, as the id type (nulls kept: dropped when bucketed)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        return pc.unique(_cast_ids(col, self.kind, self.user_col, path))

    def write(self, task: int, parts: list) -> None:
        import json
        import os
        import uuid

        os.makedirs(self.directory, exist_ok=True)
        tag = uuid.uuid4().hex[:8]

        def put(name: str, data: bytes) -> None:
            tmp = os.path.join(self.directory, f".{name}.{tag}")
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, os.path.join(self.directory, name))

        files = []
        for bucket, ids in _bucketed(parts, self.kind, self.n_buckets):
            name = f"u-{task}-{bucket}.arrow"
            put(name, _ipc_bytes(ids))
            files.append([bucket, name])
        put(f"t-{task}.json", json.dumps(files).encode())


def count_spilled_users(spark, users: UserSpill, n_tasks: int) -> int:
    """Exact distinct users from the files of ``n_tasks`` scan tasks (:class:`UserSpill`): one
    task per bucket counts the distinct ids of its files; the driver sums the counts and removes
    the directory. A task's listing the driver cannot see, or a bucket file a task cannot read,
    means the directory is not shared: an error naming ``data.block_dir``, never a short count."""
    import json
    import os
    import shutil

    by_bucket: dict[int, list[str]] = {}
    missing = []
    for t in range(n_tasks):
        try:
            with open(os.path.join(users.directory, f"t-{t}.json")) as fh:
                for bucket, name in json.load(fh):
                    by_bucket.setdefault(int(bucket), []).append(os.path.join(users.directory, name))
        except FileNotFoundError:
            missing.append(t)
    if missing:
        from segmentation.data.blockstore import block_dir_not_shared

        raise block_dir_not_shared(users.block_dir,
                                   f"the user ids {len(missing)} of {n_tasks} scan tasks wrote")
    buckets = sorted(by_bucket)
    kind = users.kind

    def count(i: int) -> int:
        parts = []
        for path in by_bucket[buckets[i]]:
            try:
                with open(path, "rb") as fh:
                    parts.extend(_ipc_ids(fh.read()))
            except FileNotFoundError:
                raise DataValidationError(
                    f"config key 'data.block_dir': the user-id file {path} written by one executor "
                    "is not visible on another: data.block_dir must be a path every executor "
                    "shares (DBFS, NFS)") from None
        return _distinct_count(parts, kind)

    from segmentation.spark_tasks import run_indexed

    total = sum(run_indexed(spark, len(buckets), count, label="segmentation: distinct users"))
    shutil.rmtree(users.directory, ignore_errors=True)
    return int(total)


def count_users(spark, units: list, user_col: str, kind: str) -> int:
    """Exact number of distinct non-null values of ``user_col`` over the row groups ``units``,
    as ``df.select(user).distinct().count()`` gives (byte equality of strings, integers as
    longs), without Spark's reader or row-wise aggregation:

    1. one task per unit reads the column with pyarrow, drops nulls, keeps its distinct ids
       (``pyarrow.compute.unique``) and splits them into ``B`` buckets by
       ``pmod(xxhash64(id), B)`` (equal ids share a bucket), emitting one row per non-empty
       bucket: ``(bucket, ids as one Arrow IPC blob)``, so the JVM shuffles a few large rows;
    2. ``repartition(B, bucket)``; each reducing task counts the distinct ids of its buckets;
    3. the driver sums the ``B`` counts.

    ``B = max(default parallelism, ceil(rows / USERS_PER_BUCKET))``. ``kind``: "string" or
    "integer" (Spark's type of the column). Measured against ``validate.count_users`` (Spark's
    ``distinct``) in ``benchmarks/bench_prepare_scan.py``."""
    rows = sum(int(r) for u in units for _, _, r in u)
    n_units = len(units)
    buckets = n_buckets(spark, rows)
    keys = spark.range(0, n_units, 1, numPartitions=n_units).mapInArrow(
        partial(_user_keys_task, units=units, user_col=user_col, kind=kind, n_buckets=buckets),
        "bucket int, ids binary")
    counts = keys.repartition(buckets, "bucket").mapInArrow(
        partial(_count_ids_task, kind=kind), "users long").collect()
    return sum(int(r["users"]) for r in counts)


def _id_type(kind: str):
    import pyarrow as pa

    return pa.large_string() if kind == "string" else pa.int64()


def _user_keys_task(batches, *, units, user_col: str, kind: str, n_buckets: int):
    """mapInArrow body, step 1 of :func:`count_users`."""
    import pyarrow as pa

    parts = []
    for path, pf, groups, names in open_units([u for i in task_ids(batches) for u in units[i]]):
        actual = names.get(user_col.lower())
        if actual is None:                        # a file without the column: all null
            continue
        col = pf.read_row_groups(groups, columns=[actual], use_threads=False).column(0)
        parts.append(_cast_ids(col, kind, user_col, path))
    for bucket, ids in _bucketed(parts, kind, n_buckets):
        yield pa.RecordBatch.from_arrays(
            [pa.array([bucket], pa.int32()), pa.array([_ipc_bytes(ids)], pa.binary())],
            names=["bucket", "ids"])


def _count_ids_task(batches, *, kind: str):
    """mapInArrow body, step 2 of :func:`count_users`: the distinct ids of this partition's
    buckets (every copy of an id is in the same bucket, so partitions count disjoint sets)."""
    import pyarrow as pa

    parts = []
    for b in batches:
        for blob in b.column(1).to_pylist():
            parts.extend(_ipc_ids(blob))
    yield pa.RecordBatch.from_arrays([pa.array([_distinct_count(parts, kind)], pa.int64())],
                                     names=["users"])
