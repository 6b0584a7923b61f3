"""The direct Parquet reader of the fused scan (data.parquet_tasks): pyarrow in the Spark tasks
gives the same report, encoding, per-(fold, creative) counts and design rows as Spark's own
reader, the same errors on bad data, and the scan goes through Spark whenever the direct
reader does not apply."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segmentation.data.blockstore import FileSink
from segmentation.data.parquet_tasks import plan_units
from segmentation.data.validate import scan_and_validate
from segmentation.errors import DataValidationError


def _write(table: pa.Table, path, n_files=3, row_group_size=300):
    os.makedirs(path, exist_ok=True)
    step = -(-table.num_rows // n_files)
    for i in range(n_files):
        pq.write_table(table.slice(i * step, step), os.path.join(path, f"part-{i:05d}.parquet"),
                       row_group_size=row_group_size)
    return str(path)


def _creatives(kw):
    return [c for s in kw["segments"].values() for c in s]


def _scan(spark, path, kw, reader, tmp_path, n_folds=3, **extra):
    df = spark.read.parquet(path)
    sink = FileSink(spark, str(tmp_path / f"blocks-{reader}"))
    choices: dict = {}
    out = scan_and_validate(df, **kw, creatives=_creatives(kw), n_folds=n_folds, seed=7,
                            sink=sink, reader=reader, source_format="parquet", choices=choices,
                            **extra)
    return out, choices


def _rows(manifest):
    """All design rows of all blocks as one matrix [X | y | creative | fold], sorted."""
    parts = [np.column_stack([b.X, b.y, b.creative, b.fold]) for b in manifest.load_blocks()]
    a = np.concatenate(parts)
    return a[np.lexsort(a.T[::-1])]


def _assert_same(a, b):
    (rep_a, enc_a, man_a), (rep_b, enc_b, man_b) = a, b
    assert rep_a.to_dict() == rep_b.to_dict()
    assert enc_a.feature_names == enc_b.feature_names
    np.testing.assert_allclose(enc_a.center, enc_b.center, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(enc_a.scale, enc_b.scale, rtol=1e-13)
    np.testing.assert_array_equal(man_a.counts, man_b.counts)       # the folds, user by user
    np.testing.assert_array_equal(man_a.positives, man_b.positives)
    ra, rb = _rows(man_a), _rows(man_b)
    assert ra.shape == rb.shape
    np.testing.assert_allclose(ra, rb, rtol=0, atol=1e-12)


@pytest.fixture()
def campaign_path(campaign, tmp_path):
    return _write(pa.Table.from_pandas(campaign.exposures, preserve_index=False), tmp_path / "exp")


def test_arrow_reader_matches_spark_reader(spark, campaign_path, validate_kwargs, tmp_path):
    arrow, how_a = _scan(spark, campaign_path, validate_kwargs, "arrow", tmp_path)
    plain, how_s = _scan(spark, campaign_path, validate_kwargs, "spark", tmp_path)
    assert how_a["reader"] == "arrow" and how_s["reader"] == "spark"
    _assert_same(arrow, plain)
    assert arrow[2].n_folds == 3 and (arrow[2].counts > 0).all()


def test_auto_takes_arrow_for_local_parquet(spark, campaign_path, validate_kwargs, tmp_path):
    (_, _, man), how = _scan(spark, campaign_path, validate_kwargs, "auto", tmp_path)
    assert how["reader"] == "arrow", how
    assert man.n_rows == 2000


def test_paths_with_spaces_and_accents(spark, campaign, validate_kwargs, tmp_path):
    """Spark lists percent-encoded URIs (file:/x/my%20data%20%C3%A9/...): the tasks open them."""
    path = _write(pa.Table.from_pandas(campaign.exposures, preserve_index=False),
                  tmp_path / "my data é")
    assert any("%20" in f for f in spark.read.parquet(path).inputFiles())
    arrow, how = _scan(spark, path, validate_kwargs, "arrow", tmp_path)
    plain, _ = _scan(spark, path, validate_kwargs, "spark", tmp_path)
    _assert_same(arrow, plain)


def test_integer_ids_boolean_response_and_nulls(spark, campaign, validate_kwargs, tmp_path):
    """Integer user and creative ids, a boolean response: the same folds and counts."""
    ex = campaign.exposures
    creatives = sorted(ex.creative.unique())
    code = {c: 100 + i for i, c in enumerate(creatives)}
    t = pa.table({
        "uid": pa.array([int(u.lstrip("u")) * 7919 - 10**6 for u in ex.user_id], pa.int64()),
        "cr": pa.array([code[c] for c in ex.creative], pa.int32()),
        "hit": pa.array(ex.response.astype(bool)),
        "x1": pa.array(ex.x1), "x2": pa.array((ex.x2 * 100).round().astype("int64")),
        "x3": pa.array(ex.x3.astype("float32")),
    })
    path = _write(t, tmp_path / "ints")
    kw = dict(user_col="uid", creative_col="cr", response_col="hit", covariates=["x1", "x2", "x3"],
              segments={s: [str(code[c]) for c in cs] for s, cs in campaign.segments.items()})
    arrow, how = _scan(spark, path, kw, "arrow", tmp_path, n_folds=5)
    plain, _ = _scan(spark, path, kw, "spark", tmp_path, n_folds=5)
    assert how["reader"] == "arrow"
    _assert_same(arrow, plain)


def _messy(campaign):
    ex = campaign.exposures.copy()
    x1 = ex.x1.astype(object)
    x1.iloc[[3, 50]] = None
    ex["x1"] = pd.array(x1, dtype="Float64")
    resp = ex.response.astype("Int64")
    resp.iloc[[5]] = 2
    resp.iloc[[6]] = pd.NA
    ex["response"] = resp
    cr = ex.creative.astype(object)
    cr.iloc[[7]] = None
    cr.iloc[[8, 9]] = "no-such-creative"
    ex["creative"] = cr
    uid = ex.user_id.astype(object)
    uid.iloc[[10]] = None
    ex["user_id"] = uid
    return pa.Table.from_pandas(ex, preserve_index=False)


def test_bad_rows_give_the_same_error_on_both_readers(spark, campaign, validate_kwargs, tmp_path):
    path = _write(_messy(campaign), tmp_path / "messy")
    errors = {}
    for reader in ("arrow", "spark"):
        with pytest.raises(DataValidationError) as e:
            _scan(spark, path, validate_kwargs, reader, tmp_path)
        errors[reader] = str(e.value)
    assert errors["arrow"] == errors["spark"]
    for needle in ("x1", "response", "no-such-creative", "user_id"):
        assert needle in errors["arrow"], (needle, errors["arrow"])
    assert not [d for d in os.listdir(tmp_path / "blocks-arrow") if not d.startswith(".owner")]


@pytest.mark.parametrize("reader", ["auto", "arrow"])
def test_unsupported_types_fall_back_or_refuse(spark, campaign, validate_kwargs, tmp_path, reader):
    from decimal import Decimal

    ex = campaign.exposures
    t = pa.Table.from_pandas(ex, preserve_index=False)
    dec = pa.array([Decimal(f"{v:.4f}") for v in ex.x5], pa.decimal128(12, 4))
    t = t.set_column(t.schema.get_field_index("x5"), "x5", dec)
    path = _write(t, tmp_path / "dec")
    if reader == "arrow":
        with pytest.raises(DataValidationError, match=r"data.reader.*'x5' \(decimal\(12,4\)\)"):
            _scan(spark, path, validate_kwargs, reader, tmp_path)
    else:
        _, how = _scan(spark, path, validate_kwargs, reader, tmp_path)
        assert how["reader"] == "spark" and "x5" in how["reader_reason"]


def test_dataframe_handed_in_and_csv_go_through_spark(spark, campaign_path, validate_kwargs,
                                                      tmp_path):
    df = spark.read.parquet(campaign_path).where("x1 > -100")
    choices: dict = {}
    scan_and_validate(df, **validate_kwargs, creatives=_creatives(validate_kwargs), n_folds=1,
                      sink=FileSink(spark, str(tmp_path / "b1")), reader="auto",
                      source_format=None, choices=choices)
    assert choices["reader"] == "spark" and "DataFrame" in choices["reader_reason"]
    with pytest.raises(DataValidationError, match="not Parquet"):
        scan_and_validate(df, **validate_kwargs, creatives=_creatives(validate_kwargs), n_folds=1,
                          sink=FileSink(spark, str(tmp_path / "b2")), reader="arrow",
                          source_format="csv")


def test_partition_directory_column_goes_through_spark(spark, campaign, validate_kwargs, tmp_path):
    ex = campaign.exposures
    root = tmp_path / "parted"
    for region, part in ex.groupby("region"):
        _write(pa.Table.from_pandas(part.drop(columns=["region"]), preserve_index=False),
               root / f"region={region}", n_files=1)
    _, how = _scan(spark, str(root), validate_kwargs, "auto", tmp_path)
    assert how["reader"] == "spark" and "partition directory" in how["reader_reason"]


def test_units_are_contiguous_balanced_and_cover_every_row_group(spark, campaign, tmp_path):
    t = pa.Table.from_pandas(campaign.exposures, preserve_index=False)
    path = _write(t, tmp_path / "many", n_files=4, row_group_size=100)
    files = sorted(spark.read.parquet(path).inputFiles())
    units = plan_units(spark, files)
    assert plan_units(spark, files, on_driver=False) == units     # footers read by the executors
    seen = [(f, g) for u in units for f, gs, _ in u for g in gs]
    expected = [(f, g) for f in files for g in range(pq.ParquetFile(f.split(":", 1)[1]).num_row_groups)]
    assert seen == expected                               # each once, in file order
    rows = [sum(n for _, _, n in u) for u in units]
    assert sum(rows) == 2000 and len(units) >= 2 and max(rows) - min(rows) <= 200


def test_unreadable_file_names_it_from_the_executors_too(spark, campaign_path):
    files = sorted(spark.read.parquet(campaign_path).inputFiles())
    with open(files[2].split(":", 1)[1].replace("///", "/"), "wb") as fh:
        fh.write(b"PAR1 truncated")
    with pytest.raises(DataValidationError, match=r"part-00002\.parquet"):
        plan_units(spark, files, on_driver=False)


def test_unreadable_file_names_it(spark, campaign_path, validate_kwargs, tmp_path):
    df = spark.read.parquet(campaign_path)
    files = df.inputFiles()
    victim = sorted(files)[1]
    with open(victim.split(":", 1)[1].replace("///", "/"), "wb") as fh:
        fh.write(b"not parquet at all")
    with pytest.raises(DataValidationError, match=r"part-00001\.parquet"):
        scan_and_validate(df, **validate_kwargs, creatives=_creatives(validate_kwargs), n_folds=1,
                          sink=FileSink(spark, str(tmp_path / "b")), reader="arrow",
                          source_format="parquet")


def test_remote_uris_go_through_spark_under_auto(spark, campaign_path):
    """auto reads only file: URIs with pyarrow (Hadoop's credentials are not pyarrow's)."""
    from segmentation.data.parquet_tasks import plan_direct_read

    class Listed:                      # a source Spark lists as s3a:// files
        def inputFiles(self):          # noqa: N802
            return ["s3a://bucket/campaign/part-00000.parquet"]

    types = {f.name: f.dataType for f in spark.read.parquet(campaign_path).schema.fields}
    cols = dict(user=["user_id"], creative=["creative"], response=["response"],
                covariates=["x1"], categorical=["region"])
    plan, why = plan_direct_read(spark, Listed(), fmt="parquet", reader="auto", own_read=True,
                                 types=types, spec_columns=cols)
    assert plan is None and "s3a: URIs" in why


def test_empty_files_say_empty_on_both_readers(spark, campaign, validate_kwargs, tmp_path):
    t = pa.Table.from_pandas(campaign.exposures, preserve_index=False).slice(0, 0)
    path = _write(t, tmp_path / "empty", n_files=2)
    for reader in ("arrow", "spark"):
        with pytest.raises(DataValidationError, match=r"empty \(0 rows\)"):
            _scan(spark, path, validate_kwargs, reader, tmp_path)


def test_a_file_rewritten_after_planning_is_named_not_read_partially(spark, campaign, campaign_path,
                                                                    validate_kwargs, tmp_path):
    from segmentation.data.parquet_tasks import DirectRead, ScanSpec

    files = sorted(spark.read.parquet(campaign_path).inputFiles())
    plan = DirectRead(spark, files, "test")
    plan.plan()
    victim = files[0].split(":", 1)[1].replace("///", "/")
    pq.write_table(pq.read_table(victim).slice(0, 250), victim, row_group_size=300)   # fewer rows
    spec = ScanSpec(user_col="user_id", creative_col="creative", response_col="response",
                    response_kind="number", covariates=("x1",), categorical=(),
                    creatives=tuple(_creatives(validate_kwargs)), n_folds=1, seed=0, batch_rows=1000)
    sink = FileSink(spark, str(tmp_path / "b"))
    with pytest.raises(Exception, match=r"part-00000\.parquet' changed while prepare\(\) read it"):
        sink.run(plan.frame(spec), n_stats=1, n_creatives=len(spec.creatives), n_folds=1)
    sink.abort()


def test_a_task_error_reaches_the_caller_as_data_validation_error(spark, campaign, validate_kwargs,
                                                                  tmp_path):
    """A covariate stored as text in one file (the others numeric) fails in the task that reads
    it; prepare() raises DataValidationError naming the column and the file, blocks removed."""
    t = pa.Table.from_pandas(campaign.exposures, preserve_index=False)
    path = _write(t, tmp_path / "mixed")
    odd = os.path.join(path, "part-00001.parquet")
    bad = pq.read_table(odd)
    bad = bad.set_column(bad.schema.get_field_index("x2"), "x2",
                         pa.array(["n/a"] * bad.num_rows, pa.string()))
    pq.write_table(bad, odd)
    with pytest.raises(DataValidationError, match=r"column 'x2' in Parquet file '.*part-00001"):
        _scan(spark, path, validate_kwargs, "arrow", tmp_path)
    assert not [d for d in os.listdir(tmp_path / "blocks-arrow") if not d.startswith(".owner")]


def test_a_user_column_of_another_type_in_one_file_is_named(spark, campaign, validate_kwargs,
                                                           tmp_path):
    """Integer user ids, text ids in one file: the user count's task names the column and the
    file (DataValidationError, not Spark's wrapped exception), and no block is written."""
    t = pa.Table.from_pandas(campaign.exposures, preserve_index=False)
    ids = pa.array([int(u.lstrip("u")) for u in campaign.exposures.user_id], pa.int64())
    t = t.set_column(t.schema.get_field_index("user_id"), "user_id", ids)
    path = _write(t, tmp_path / "ids")
    odd = os.path.join(path, "part-00002.parquet")
    bad = pq.read_table(odd)
    bad = bad.set_column(bad.schema.get_field_index("user_id"), "user_id",
                         pa.array([f"id-{i}" for i in range(bad.num_rows)], pa.string()))
    pq.write_table(bad, odd)
    with pytest.raises(DataValidationError,
                       match=r"user column 'user_id' in Parquet file '.*part-00002.*an integer id"):
        _scan(spark, path, validate_kwargs, "arrow", tmp_path)
    blocks = tmp_path / "blocks-arrow"       # what the scan wrote before the error is removed
    assert not blocks.exists() or not [d for d in os.listdir(blocks) if not d.startswith(".owner")]


def _users_table(kind: str, rng):
    """User ids with repeats, nulls and (strings) case and trailing-space variants."""
    raw = rng.integers(0, 700, size=3000)
    if kind == "string":
        ids = [None if v % 97 == 0 else (f"U{v}" if v % 5 else f"u{v} ") for v in raw]
        col = pa.array(ids, pa.string())
    else:
        col = pa.array([None if v % 97 == 0 else int(v) * 10**12 - 7 for v in raw], pa.int64())
    return col, raw


def _users_input(spark, kind: str, seed: int, tmp_path, monkeypatch):
    """Those ids in 4 files of row groups of 200 and a file without the column, planned into
    several tasks, 31 buckets; with Spark's distinct count of them."""
    from segmentation.data import parquet_tasks
    from segmentation.data.parquet_tasks import DirectRead
    from segmentation.data.validate import count_users

    col, raw = _users_table(kind, np.random.default_rng(seed))
    path = _write(pa.table({"user": col, "x": pa.array(raw.astype(float))}), tmp_path / kind,
                  n_files=4, row_group_size=200)
    pq.write_table(pa.table({"x": pa.array([1.0, 2.0])}), os.path.join(path, "part-99999.parquet"))
    df = spark.read.parquet(path)
    expected = count_users(df, "user")
    assert expected == len({v for v in col.to_pylist() if v is not None})
    monkeypatch.setattr(parquet_tasks, "USERS_PER_BUCKET", 100)
    direct = DirectRead(spark, list(df.inputFiles()), "test")
    assert len(direct.plan()) >= 2
    return direct, expected, col


@pytest.mark.parametrize("kind", ["string", "integer"])
def test_distinct_users_match_spark_with_repeats_nulls_and_many_buckets(spark, tmp_path, kind,
                                                                         monkeypatch):
    """The direct count (pyarrow in the tasks, ids shuffled as blobs by bucket) equals Spark's
    ``distinct().count()``: users repeated within and across files and tasks, nulls, a file
    without the user column, ids that differ only in case or trailing space, and more buckets
    than reducing tasks see at once."""
    direct, expected, col = _users_input(spark, kind, 3, tmp_path, monkeypatch)
    assert direct.count_users("user", kind) == expected


def _drainer():
    """A scan task that only reads its batches (nested: workers cannot import this module)."""
    def drain(batches):
        import pyarrow as _pa

        n = 0
        for b in batches:
            n += b.num_rows
        yield _pa.RecordBatch.from_pydict({"rows": _pa.array([n], _pa.int64())})
    return drain


@pytest.mark.parametrize("kind", ["string", "integer"])
def test_users_left_by_the_scan_tasks_count_as_spark_distinct(spark, tmp_path, kind, monkeypatch):
    """With block files, the scan's own tasks leave their distinct ids (UserSpill) and one small
    job counts them by bucket: equal to Spark's distinct().count() with repeats within and
    across tasks, nulls, a file without the column, case and trailing-space variants, and 31
    buckets; the directory is removed after the count."""
    from segmentation.data.parquet_tasks import ScanSpec

    direct, expected, col = _users_input(spark, kind, 4, tmp_path, monkeypatch)
    spill = direct.user_spill(str(tmp_path / "spill"), "user", kind, str(tmp_path))
    assert spill.n_buckets == 31                # ceil(3002 rows / 100)
    spec = ScanSpec(user_col="user", creative_col="cr", response_col="y", response_kind="number",
                    covariates=("x",), categorical=(), creatives=("a",), n_folds=2, seed=0,
                    batch_rows=128)
    rows = direct.frame(spec, users=spill).mapInArrow(_drainer(), "rows long").collect()
    assert sum(r["rows"] for r in rows) == 3002
    assert direct.count_spilled_users(spill) == expected
    assert not os.path.exists(spill.directory)


def test_user_ids_the_driver_cannot_see_name_block_dir(spark, tmp_path):
    """A task's listing missing on the driver (a block_dir not shared) is an error naming the
    key, never a short count."""
    from segmentation.data.parquet_tasks import DirectRead, ScanSpec

    col, raw = _users_table("string", np.random.default_rng(5))
    path = _write(pa.table({"user": col, "x": pa.array(raw.astype(float))}), tmp_path / "exp")
    direct = DirectRead(spark, list(spark.read.parquet(path).inputFiles()), "test")
    spill = direct.user_spill(str(tmp_path / "blocks" / ".tmp-v" / "users"), "user", "string",
                              str(tmp_path / "blocks"))
    spec = ScanSpec(user_col="user", creative_col="cr", response_col="y", response_kind="number",
                    covariates=("x",), categorical=(), creatives=("a",), n_folds=1, seed=0,
                    batch_rows=512)
    direct.frame(spec, users=spill).mapInArrow(_drainer(), "rows long").collect()
    os.remove(os.path.join(spill.directory, "t-1.json"))
    with pytest.raises(DataValidationError, match=r"data.block_dir.*not shared.*1 of [0-9]+ scan tasks"):
        direct.count_spilled_users(spill)


def test_prepare_with_block_files_counts_users_in_the_scan(spark, campaign_path, validate_kwargs,
                                                          tmp_path):
    """scan_and_validate with the direct reader and block files: no user-count job of its own
    before the scan, one bucket-count job after it, the report's users equal Spark's count."""
    from segmentation.data.validate import count_users

    tracker = spark.sparkContext.statusTracker()
    before = set(tracker.getJobIdsForGroup(None) or [])
    timings: dict = {}
    (rep, _, man), how = _scan(spark, campaign_path, validate_kwargs, "arrow", tmp_path,
                               timings=timings)
    jobs = sorted(set(tracker.getJobIdsForGroup(None) or []) - before)
    first = [tracker.getStageInfo(min(tracker.getJobInfo(j).stageIds)).name for j in jobs]
    assert how["reader"] == "arrow"
    assert rep.n_users == count_users(spark.read.parquet(campaign_path), "user_id")
    assert not os.path.exists(os.path.join(os.path.dirname(man.paths[0]), "users"))
    # no job of parquet_tasks.count_users (its map and shuffle stages); one bucket-count job
    assert not [n for n in first if "parquet_tasks.py" in n], first
    assert len([n for n in first if "spark_tasks.py" in n]) == 1, first
