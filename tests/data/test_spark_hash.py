"""spark_hash: the numpy xxhash64 / fold agree bit for bit with Spark's."""
from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from segmentation.data.folds import fold_expression
from segmentation.data.spark_hash import spark_fold, xxhash64_int, xxhash64_long, xxhash64_utf8

SEEDS = [0, 1, -5, 2**40]
N_FOLDS = [1, 2, 5, 7]


def _strings():
    rng = random.Random(11)
    alphabet = [chr(c) for c in range(32, 127)]
    out = []
    for length in range(101):  # every ASCII length 0..100, twice
        out += ["".join(rng.choices(alphabet, k=length)) for _ in range(2)]
    for length in (1000, 1023, 1024, 1031, 2047, 4099):
        out.append("".join(rng.choices(alphabet, k=length)))
    out += ["é", "café", "漢字", "😀", "naïve 漢字 😀 mix", "é" * 17, "漢" * 11, "😀" * 8,
            "u-漢字-" * 40, "😀x" * 300, "", "", None, None, "u1", "u2"]
    return out


_INTS = {
    "long": (T.LongType(), pa.int64(), np.int64,
             [-(2**63), 2**63 - 1, 0, -1, 1, -2, 42, 123456789012, -98765432109876, 2**31, -(2**31) - 1]),
    "int": (T.IntegerType(), pa.int32(), np.int32, [-(2**31), 2**31 - 1, 0, -1, 1, -2, 42, 65535, -70000]),
    "short": (T.ShortType(), pa.int16(), np.int16, [-(2**15), 2**15 - 1, 0, -1, 1, -2, 255, -300]),
    "byte": (T.ByteType(), pa.int8(), np.int8, [-128, 127, 0, -1, 1, -2, 100, -100]),
}


def _case(kind):
    """(spark type, arrow type, values incl. nulls) for one user-id type."""
    if kind in ("string", "large_string"):
        arrow = pa.string() if kind == "string" else pa.large_string()
        return T.StringType(), arrow, _strings()
    spark_type, arrow, _, values = _INTS[kind]
    rng = np.random.default_rng(5)
    info = np.iinfo(_INTS[kind][2])
    values = values + [int(v) for v in rng.integers(info.min, info.max, 40, endpoint=True)] + [None, None]
    return spark_type, arrow, values


KINDS = ["string", "long", "int", "short", "byte"]


@pytest.fixture(scope="module")
def spark_results(spark):
    """Per kind: (values, arrow type, seeds, Spark's results) with the raw hashes and every fold.

    One DataFrame, one column per kind (shorter columns padded with nulls), one collect.
    """
    cases = {kind: _case(kind) for kind in KINDS}
    n_rows = max(len(values) for _, _, values in cases.values())
    columns = {kind: values + [None] * (n_rows - len(values)) for kind, (_, _, values) in cases.items()}
    seeds = [(-1) ** i * (i * 7919) for i in range(n_rows)]
    schema = T.StructType([T.StructField("i", T.IntegerType(), False),
                           T.StructField("s", T.LongType(), False)]
                          + [T.StructField(kind, cases[kind][0], True) for kind in KINDS])
    df = spark.createDataFrame(list(zip(range(n_rows), seeds, *columns.values())), schema)
    assert [t for _, t in df.dtypes] == ["int", "bigint", "string", "bigint", "int", "smallint", "tinyint"]
    exprs = [F.col("i")]
    for kind in KINDS:
        exprs += [F.xxhash64(kind).alias(f"{kind}_h"), F.xxhash64("s", kind).alias(f"{kind}_hs")]
        exprs += [fold_expression(kind, n, seed).alias(f"{kind}_f_{n}_{seed}")
                  for n in N_FOLDS for seed in SEEDS]
    rows = sorted(df.select(*exprs).collect(), key=lambda r: r["i"])
    results = {}
    for kind in KINDS:
        got = {name[len(kind) + 1:]: [r[name] for r in rows]
               for name in rows[0].asDict() if name.startswith(kind + "_")}
        results[kind] = (columns[kind], cases[kind][1], seeds, got)
    results["large_string"] = (columns["string"], pa.large_string(), seeds, results["string"][3])
    return results


def _hash_column(kind, values, arrow, seeds):
    """The numpy hash of the user column with per-row seeds (nulls keep the seed)."""
    if kind in ("string", "large_string"):
        return xxhash64_utf8(pa.array(values, type=arrow), seeds)
    dtype = _INTS[kind][2]
    h = (xxhash64_long if dtype is np.int64 else xxhash64_int)(
        np.array([0 if v is None else v for v in values], dtype=dtype), seeds)
    return np.where([v is None for v in values], seeds, h)


@pytest.mark.parametrize("kind", ["string", "large_string", "long", "int", "short", "byte"])
def test_raw_hash_matches_spark(spark_results, kind):
    values, arrow, seeds, spark = spark_results[kind]
    got = _hash_column(kind, values, arrow, 42).view(np.int64)
    assert got.tolist() == spark["h"]
    # xxhash64(s, user): the user hashed with per-row seeds hashLong(s, 42)
    h_seed = xxhash64_long(np.array(seeds, dtype=np.int64), 42)
    got = _hash_column(kind, values, arrow, h_seed).view(np.int64)
    assert got.tolist() == spark["hs"]


@pytest.mark.parametrize("kind", ["string", "large_string", "long", "int", "short", "byte"])
def test_spark_fold_matches_spark(spark_results, kind):
    values, arrow, _, spark = spark_results[kind]
    user = pa.array(values, type=arrow)
    for n in N_FOLDS:
        for seed in SEEDS:
            got = spark_fold(user, n, seed)
            assert got.dtype == np.int32
            assert got.tolist() == spark[f"f_{n}_{seed}"], (n, seed)


@pytest.mark.parametrize("kind", ["string", "large_string", "long", "byte"])
def test_sliced_and_chunked_arrays(spark_results, kind):
    values, arrow, _, spark = spark_results[kind]
    full = pa.array(values, type=arrow)
    expected = spark["f_7_-5"]
    for lo, hi in [(3, len(values) - 4), (len(values) - 20, len(values)), (1, 1)]:
        sliced = full.slice(lo, hi - lo)
        assert sliced.offset == lo
        assert spark_fold(sliced, 7, -5).tolist() == expected[lo:hi]
    chunked = pa.chunked_array([full.slice(0, 10), full.slice(10, 0), full.slice(10)])
    assert spark_fold(chunked, 7, -5).tolist() == expected


def test_plain_python_strings_and_empty_inputs():
    strings = ["a", None, "漢字" * 20, ""]
    assert xxhash64_utf8(strings, 9).tolist() == xxhash64_utf8(pa.array(strings), 9).tolist()
    assert xxhash64_utf8(strings, 9)[1] == 9  # a null keeps its seed
    assert xxhash64_utf8([], 0).shape == (0,)
    assert spark_fold(pa.array([], type=pa.string()), 5, 1).shape == (0,)
    assert spark_fold(pa.array([None, None], type=pa.string()), 5, 1).tolist() == \
        spark_fold(pa.array([None, None], type=pa.int8()), 5, 1).tolist()


def test_reference_xxh64_vectors():
    # the reference XXH64 test vectors (seed 0) for the empty string and "abc"
    assert xxhash64_utf8(["", "abc"], 0).tolist() == [0xEF46DB3751D8E999, 0x44BC2CF5AD770999]


@pytest.mark.parametrize("arrow_type", [pa.float64(), pa.bool_(), pa.uint32(), pa.binary()])
def test_unsupported_type_raises(arrow_type):
    with pytest.raises(TypeError, match=str(arrow_type)):
        spark_fold(pa.array([], type=arrow_type), 5, 0)
    with pytest.raises(TypeError, match=str(arrow_type)):
        spark_fold(pa.array([], type=arrow_type), 1, 0)


def test_bad_arguments():
    with pytest.raises(ValueError):
        spark_fold(pa.array(["a"]), 0, 0)
    with pytest.raises(ValueError):
        spark_fold(pa.array(["a"]), 3, 2**63)
    with pytest.raises(TypeError):
        xxhash64_int(np.array([1], dtype=np.int64), 0)
    with pytest.raises(TypeError):
        xxhash64_utf8(pa.array([1.0]), 0)


def test_no_spark_import():
    code = "import sys, segmentation.data.spark_hash; assert 'pyspark' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
