"""Spark SQL's ``xxhash64`` in vectorised numpy, so that pyarrow readers get Spark's folds.

:func:`spark_fold` reproduces, bit for bit, the fold of :func:`segmentation.data.folds.fold_expression`::

    pmod(xxhash64(user, cast(seed as long)), cast(n_folds as long)) cast as int

without Spark: executors that read Parquet with pyarrow can compute the same fold as the driver.
Nothing here imports Spark.

The math (Spark's ``XXH64.java`` and ``HashExpression`` in ``hash.scala``), all on 64-bit words
with wrap-around arithmetic (mod 2**64), ``rotl(x, r)`` the 64-bit left rotation::

    P1 = 0x9E3779B185EBCA87  P2 = 0xC2B2AE3D27D4EB4F  P3 = 0x165667B19E3779F9
    P4 = 0x85EBCA77C2B2AE63  P5 = 0x27D4EB2F165667C5

    fmix(h):      h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P3; h ^= h >> 32
    round(v, k):  rotl(v + k * P2, 31) * P1
    merge(h, v):  (h ^ round(0, v)) * P1 + P4

    hashInt(i, seed)  = fmix(rotl((seed + P5 + 4) ^ (u32(i) * P1), 23) * P2 + P3)
    hashLong(l, seed) = fmix(rotl((seed + P5 + 8) ^ round(0, l), 27) * P1 + P4)
    hashBytes(b, seed): the reference XXH64 of the byte string b (length n), words read
        little-endian:
        if n >= 32: v1, v2, v3, v4 = seed + P1 + P2, seed + P2, seed, seed - P1
                    for each whole 32-byte stripe: v_j = round(v_j, j-th 8-byte word)
                    h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18)
                    h = merge(merge(merge(merge(h, v1), v2), v3), v4)
        else:       h = seed + P5
        h += n
        each remaining whole 8-byte word k:  h = rotl(h ^ round(0, k), 27) * P1 + P4
        a remaining 4-byte word w (if any):  h = rotl(h ^ (u32(w) * P1), 23) * P2 + P3
        each remaining byte c:               h = rotl(h ^ (c * P5), 11) * P1
        return fmix(h)

(``hashInt``/``hashLong`` are exactly ``hashBytes`` of the 4/8 little-endian bytes.) Spark's
``xxhash64(c1, c2, ...)`` starts at ``h = 42`` and folds the columns left to right,
``h = hash(c_i, h)``; a null value leaves ``h`` unchanged. Per column type: string -> hashBytes
of the UTF-8 bytes (default ``UTF8_BINARY`` collation only), long -> hashLong, int / short /
byte -> hashInt of the value widened to int (sign-extended), boolean -> hashInt(1 or 0).
``pmod(h, n)`` takes ``h`` as a signed long: ``((h % n) + n) % n``, always in ``0..n-1``.
"""
from __future__ import annotations

import numpy as np

from segmentation.data.folds import _check_n_folds

__all__ = ["SPARK_XXHASH64_SEED", "xxhash64_long", "xxhash64_int", "xxhash64_utf8", "spark_fold"]

#: The seed Spark's ``xxhash64(...)`` starts from.
SPARK_XXHASH64_SEED = 42

_P1 = np.uint64(0x9E3779B185EBCA87)
_P2 = np.uint64(0xC2B2AE3D27D4EB4F)
_P3 = np.uint64(0x165667B19E3779F9)
_P4 = np.uint64(0x85EBCA77C2B2AE63)
_P5 = np.uint64(0x27D4EB2F165667C5)
_MASK64 = (1 << 64) - 1
_U64 = np.dtype(np.uint64)
_LE_U64 = np.dtype("<u8")
_LE_U32 = np.dtype("<u4")


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    """The 64-bit left rotation of the uint64 array ``x`` by ``r`` bits (0 < r < 64)."""
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _fmix(h: np.ndarray) -> np.ndarray:
    """XXH64's avalanche: ``h ^= h>>33; h *= P2; h ^= h>>29; h *= P3; h ^= h>>32``."""
    h = h ^ (h >> np.uint64(33))
    h = h * _P2
    h = h ^ (h >> np.uint64(29))
    h = h * _P3
    return h ^ (h >> np.uint64(32))


def _round(acc: np.ndarray, word: np.ndarray) -> np.ndarray:
    """XXH64's accumulator round ``rotl(acc + word * P2, 31) * P1``."""
    return _rotl(acc + word * _P2, 31) * _P1


def _mix_word8(h: np.ndarray, word: np.ndarray) -> np.ndarray:
    """Fold one 8-byte word into ``h``: ``rotl(h ^ round(0, word), 27) * P1 + P4``."""
    return _rotl(h ^ (_rotl(word * _P2, 31) * _P1), 27) * _P1 + _P4


def _mix_word4(h: np.ndarray, word: np.ndarray) -> np.ndarray:
    """Fold one 4-byte word (as uint64 in 0..2**32-1) into ``h``: ``rotl(h ^ word * P1, 23) * P2 + P3``."""
    return _rotl(h ^ (word * _P1), 23) * _P2 + _P3


def _mix_byte(h: np.ndarray, byte: np.ndarray) -> np.ndarray:
    """Fold one byte (as uint64 in 0..255) into ``h``: ``rotl(h ^ byte * P5, 11) * P1``."""
    return _rotl(h ^ (byte * _P5), 11) * _P1


def _seeds(seeds, n: int) -> np.ndarray:
    """``seeds`` (a Python/numpy int, or an int array of length ``n``) as uint64 of shape ``(n,)``.

    Signed seeds are taken as their two's-complement 64-bit pattern (a Java ``long``).
    """
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, (bool, np.bool_)):
        seed = int(seeds)
        if not -(1 << 63) <= seed < (1 << 64):
            raise ValueError(f"seed {seed} does not fit in 64 bits")
        return np.full(n, seed & _MASK64, dtype=np.uint64)
    arr = np.asarray(seeds)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"seeds must be integers, got dtype {arr.dtype}")
    if arr.dtype.kind == "i":
        arr = arr.astype(np.int64, copy=False).view(np.uint64)
    else:
        arr = arr.astype(np.uint64, copy=False)
    if arr.shape != (n,):
        raise ValueError(f"seeds must be a scalar or have shape ({n},), got shape {arr.shape}")
    return arr


def xxhash64_long(values, seeds) -> np.ndarray:
    """Spark's ``XXH64.hashLong(value, seed)`` for each element, as uint64.

    ``h = seed + P5 + 8;  h ^= rotl(value * P2, 31) * P1;  h = rotl(h, 27) * P1 + P4;
    return fmix(h)`` (mod 2**64), i.e. XXH64 of the 8 little-endian bytes of the long.

    ``values``: int64 array (any integer array is converted to int64; uint64 is reinterpreted).
    ``seeds``: an int (a Java long, negative allowed) or an int64/uint64 array of the same length.
    Take ``.view(np.int64)`` of the result for Spark's signed long.
    """
    v = np.asarray(values)
    if v.dtype.kind not in "iu":
        raise TypeError(f"xxhash64_long needs integer values, got dtype {v.dtype}")
    v = v.astype(np.int64, copy=False).view(np.uint64).ravel()
    s = _seeds(seeds, v.shape[0])
    with np.errstate(over="ignore"):
        return _fmix(_mix_word8(s + _P5 + np.uint64(8), v))


def xxhash64_int(values, seeds) -> np.ndarray:
    """Spark's ``XXH64.hashInt(value, seed)`` for each element, as uint64.

    ``h = seed + P5 + 4;  h ^= (value & 0xFFFFFFFF) * P1;  h = rotl(h, 23) * P2 + P3;
    return fmix(h)`` (mod 2**64), i.e. XXH64 of the 4 little-endian bytes of the int. Spark hashes
    int, short and byte columns this way after widening to int (negatives sign-extended, so
    ``-1`` hashes as ``0xFFFFFFFF`` whatever its width), and booleans as 1 or 0.

    ``values``: an int8/int16/int32 (or bool) array. ``seeds``: an int or an int64/uint64 array of
    the same length.
    """
    v = np.asarray(values)
    if not (v.dtype == np.bool_ or (v.dtype.kind == "i" and v.dtype.itemsize <= 4)):
        raise TypeError(f"xxhash64_int needs int8/int16/int32 or bool values, got dtype {v.dtype}")
    v = v.astype(np.int32).view(np.uint32).astype(np.uint64).ravel()
    s = _seeds(seeds, v.shape[0])
    with np.errstate(over="ignore"):
        return _fmix(_mix_word4(s + _P5 + np.uint64(4), v))


def _string_buffers(values):
    """``(offsets, data, valid)`` of a string array: int64 offsets (length n+1), the uint8 data
    buffer and a bool validity mask (None when there are no nulls). Slices are honoured."""
    import pyarrow as pa

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    if not isinstance(values, pa.Array):
        values = pa.array(list(values), type=pa.string())
    t = values.type
    if pa.types.is_string(t):
        off_dtype = np.int32
    elif pa.types.is_large_string(t):
        off_dtype = np.int64
    else:
        raise TypeError(f"xxhash64_utf8 needs a string or large_string array, got {t}")
    n = len(values)
    _, off_buf, data_buf = values.buffers()
    if n == 0:
        return np.zeros(1, np.int64), np.zeros(0, np.uint8), None
    offsets = np.frombuffer(off_buf, dtype=off_dtype, count=values.offset + n + 1)
    offsets = offsets[values.offset:].astype(np.int64)
    data = np.zeros(0, np.uint8) if data_buf is None else np.frombuffer(data_buf, dtype=np.uint8)
    valid = None
    if values.null_count:
        valid = values.is_valid().to_numpy(zero_copy_only=False)
    return offsets, data, valid


def _gather(data: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """The ``width`` bytes of ``data`` starting at each ``pos``: a ``(len(pos), width)`` uint8 array."""
    return data[pos[:, None] + np.arange(width, dtype=np.int64)]


def _hash_bytes(offsets: np.ndarray, data: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """XXH64 of the byte strings ``data[offsets[i]:offsets[i+1]]`` with seeds ``seeds[i]``.

    Vectorised over rows: rows are sorted by byte length (longest first) so that the rows still
    having a 32-byte stripe ``k`` are a prefix; the stripe loop runs ``max_length // 32`` times and
    each pass is a ``(rows, 32)`` uint8 gather viewed as four little-endian uint64 words. The tail
    (< 32 bytes: up to three 8-byte words, one 4-byte word, up to three bytes) is done by passes
    over the rows that have that piece. The number of numpy operations depends on the longest
    string, not on the number of rows or distinct lengths.
    """
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    n = lengths.shape[0]
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    order = np.argsort(-lengths, kind="stable")
    start = starts[order]
    length = lengths[order]
    seed = seeds[order]
    length_u = length.astype(np.uint64)

    n_stripes = length // 32
    n_long = int(np.count_nonzero(n_stripes))  # rows with >= 32 bytes: a prefix of the order
    h = seed + _P5
    if n_long:
        s = seed[:n_long]
        v1, v2, v3, v4 = s + _P1 + _P2, s + _P2, s.copy(), s - _P1
        # rows still having stripe k: n_stripes sorted descending, so a prefix of length active[k]
        stripes_asc = n_stripes[:n_long][::-1]
        max_stripes = int(n_stripes[0])
        active = n_long - np.searchsorted(stripes_asc, np.arange(1, max_stripes + 1), side="left")
        for k in range(max_stripes):
            m = int(active[k])
            words = _gather(data, start[:m] + 32 * k, 32).view(_LE_U64).astype(_U64, copy=False)
            v1[:m] = _round(v1[:m], words[:, 0])
            v2[:m] = _round(v2[:m], words[:, 1])
            v3[:m] = _round(v3[:m], words[:, 2])
            v4[:m] = _round(v4[:m], words[:, 3])
        acc = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        for v in (v1, v2, v3, v4):
            acc = (acc ^ _round(np.zeros_like(v), v)) * _P1 + _P4
        h[:n_long] = acc
    h = h + length_u

    # tail: the last length % 32 bytes
    tail_start = start + 32 * n_stripes
    rest = length % 32
    for w in range(3):  # 8-byte words
        rows = np.flatnonzero(rest // 8 > w)
        if rows.size:
            word = _gather(data, tail_start[rows] + 8 * w, 8).view(_LE_U64).astype(_U64, copy=False)
            h[rows] = _mix_word8(h[rows], word[:, 0])
    after_words = tail_start + (rest // 8) * 8
    rest = rest % 8
    rows = np.flatnonzero(rest >= 4)  # one 4-byte word
    if rows.size:
        word = _gather(data, after_words[rows], 4).view(_LE_U32)[:, 0].astype(_U64)
        h[rows] = _mix_word4(h[rows], word)
    after_int = after_words + np.where(rest >= 4, 4, 0)
    rest = rest % 4
    for b in range(3):  # single bytes
        rows = np.flatnonzero(rest > b)
        if rows.size:
            h[rows] = _mix_byte(h[rows], data[after_int[rows] + b].astype(_U64))
    out[order] = _fmix(h)
    return out


def xxhash64_utf8(values, seeds) -> np.ndarray:
    """Spark's ``XXH64.hashUnsafeBytes`` of each string's UTF-8 bytes with its seed, as uint64.

    That is the reference XXH64 of the bytes (see the module docstring) seeded with ``seed``;
    Spark uses it for strings of the default ``UTF8_BINARY`` collation. A null row returns its
    seed unchanged (how Spark's ``xxhash64`` skips a null column value).

    ``values``: a pyarrow ``StringArray``/``LargeStringArray`` (slices, nulls and chunked arrays
    accepted) or a sequence of ``str``/``None``. ``seeds``: an int or an int64/uint64 array of the
    same length. Vectorised; see :func:`_hash_bytes`.
    """
    offsets, data, valid = _string_buffers(values)
    s = _seeds(seeds, offsets.shape[0] - 1)
    with np.errstate(over="ignore"):
        h = _hash_bytes(offsets, data, s)
    if valid is not None:
        h = np.where(valid, h, s)
    return h


_INT_TYPES = {"int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64}


def _check_user_type(t) -> None:
    """TypeError unless the arrow type ``t`` is one :func:`spark_fold` hashes like Spark."""
    import pyarrow as pa

    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) in _INT_TYPES):
        raise TypeError(f"spark_fold supports string, large_string, int64, int32, int16 and int8 "
                        f"user ids, got arrow type {t}")


def _hash_column(user, h: np.ndarray) -> np.ndarray:
    """``h`` after Spark hashes one column value per row (nulls leave ``h`` unchanged)."""
    _check_user_type(user.type)
    dtype = _INT_TYPES.get(str(user.type))
    if dtype is None:
        return xxhash64_utf8(user, h)
    values = user.fill_null(0).to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    out = xxhash64_long(values, h) if dtype is np.int64 else xxhash64_int(values, h)
    if user.null_count:
        out = np.where(user.is_valid().to_numpy(zero_copy_only=False), out, h)
    return out


def spark_fold(user, n_folds: int, seed: int = 0) -> np.ndarray:
    """The cross-validation fold of each user id exactly as Spark computes it, as int32.

    Equal to Spark's ``pmod(xxhash64(user, cast(seed as long)), cast(n_folds as long)) cast int``
    (:func:`segmentation.data.folds.fold_expression`): ``h = 42``; ``h = hash(user, h)`` (skipped
    for a null user); ``h = hashLong(seed, h)``; fold = ``h`` as a signed long mod ``n_folds``,
    in ``0..n_folds-1``. ``n_folds == 1`` gives all zeros.

    ``user``: a pyarrow array (or chunked array) of type string, large_string, int64, int32,
    int16 or int8, matching Spark's string / long / int / short / byte column; nulls allowed.
    Any other type raises TypeError. ``seed`` must fit in a long.
    """
    import pyarrow as pa

    n_folds = _check_n_folds(n_folds)
    seed = int(seed)
    if not -(1 << 63) <= seed < (1 << 63):
        raise ValueError(f"seed {seed} does not fit in a long")
    if isinstance(user, pa.ChunkedArray):
        _check_user_type(user.type)
        if user.num_chunks == 0:
            return np.zeros(0, dtype=np.int32)
        return np.concatenate([spark_fold(c, n_folds, seed) for c in user.chunks])
    if not isinstance(user, pa.Array):
        raise TypeError(f"spark_fold needs a pyarrow Array, got {type(user).__name__}")
    _check_user_type(user.type)
    n = len(user)
    if n_folds == 1:
        return np.zeros(n, dtype=np.int32)
    h = _hash_column(user, np.full(n, SPARK_XXHASH64_SEED, dtype=np.uint64))
    h = xxhash64_long(np.full(n, seed, dtype=np.int64), h)
    return (h.view(np.int64) % np.int64(n_folds)).astype(np.int32)
