"""One pass over the users that serves many requests at once (numpy kernel, numpy and Spark runners).

The search for the offered set (``transport.search``) keeps many questions open at the same time:
price updates of several dual solves (one per candidate set), the segment sums a Lloyd step needs,
capacity-free set values for greedy and swap screening. Each is a sum over users, so one pass
answers all of them: every batch of users is read once and every task computes its rows on it.

Tasks (``cols`` index the candidate treatments T, in the order the task's set lists them):

- ``DualTask(cols, p, deltas)``: ``kernel.batch_rows`` on V[:, cols] at prices p: the sums of one
  price update (merged into a ``kernel.PriceStats``).
- ``SumsTask(cols, p, delta)``: users grouped by candidate set A_i = {k : v_ik - p_k >= max - delta}
  (a bit mask over ``cols``), and per group [m_g, sum_{i in g} v_it for every t in T]: what each
  offered treatment's segment would be worth under any other treatment (the Lloyd step).
- ``SetTask(sets)``: F(A) = sum_i max_{t in A} v_it for every set A (no capacities).

A row is ``(task, level, mask, vector)``; rows with the same first three fields add. The Spark
runner adds them inside each partition (one output batch per partition, a few rows per task and
candidate-set group) and on the driver, so the driver holds O(tasks x groups x |T|) numbers,
never a per-user array.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from segmentation.transport.kernel import PriceStats, batch_rows, merge_rows, surplus_masks

ROW_SCHEMA = "task int, level int, mask long, vec array<double>"


@dataclass(frozen=True)
class DualTask:
    cols: tuple
    p: np.ndarray
    deltas: np.ndarray


@dataclass(frozen=True)
class SumsTask:
    cols: tuple
    p: np.ndarray
    delta: float


@dataclass(frozen=True)
class SetTask:
    sets: tuple          # tuple of tuples of column indices



def task_rows(V: np.ndarray, tasks: Sequence) -> list[tuple[int, int, int, np.ndarray]]:
    """The rows of every task for one batch of users (V: users x |T|, float64)."""
    out = []
    n = V.shape[0]
    for j, task in enumerate(tasks):
        if isinstance(task, DualTask):
            for level, mask, vec in batch_rows(V[:, list(task.cols)], task.p, task.deltas):
                out.append((j, level, mask, vec))
        elif isinstance(task, SumsTask):
            if n == 0:
                continue
            masks = surplus_masks(V[:, list(task.cols)] - task.p[None, :], task.delta)
            uniq, inv = np.unique(masks, return_inverse=True)
            m = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
            sums = np.stack([np.bincount(inv, weights=V[:, t], minlength=len(uniq))
                             for t in range(V.shape[1])], axis=1)
            for g, mask in enumerate(uniq):
                out.append((j, 0, int(mask), np.concatenate([[m[g]], sums[g]])))
        elif isinstance(task, SetTask):
            vals = [float(V[:, list(s)].max(axis=1).sum()) if n else 0.0 for s in task.sets]
            for s, v in enumerate(vals):
                out.append((j, 0, s, np.array([v])))
        else:
            raise TypeError(f"unknown task {task!r}")
    return out


def add_rows(acc: dict, rows) -> dict:
    """Add rows into ``acc`` keyed by (task, level, mask)."""
    for j, level, mask, vec in rows:
        key = (int(j), int(level), int(mask))
        vec = np.asarray(vec, dtype=np.float64)
        if key in acc:
            acc[key] = acc[key] + vec
        else:
            acc[key] = vec.copy()
    return acc


def results_of(tasks: Sequence, acc: dict) -> list:
    """Per task: a PriceStats, a {mask: [m, sums...]} dict, or an array of set values."""
    by_task: list[list] = [[] for _ in tasks]
    for (j, level, mask), vec in acc.items():
        by_task[j].append((level, mask, vec))
    out = []
    for task, rows in zip(tasks, by_task):
        if isinstance(task, DualTask):
            out.append(merge_rows(rows, len(task.cols)) if rows else PriceStats(K=len(task.cols)))
        elif isinstance(task, SumsTask):
            out.append({mask: vec for _, mask, vec in rows})
        else:
            vals = np.zeros(len(task.sets))
            for _, s, vec in rows:
                vals[s] += vec[0]
            out.append(vals)
    return out


Runner = Callable[[Sequence], list]


def sample_threshold(n: int, size: int) -> int:
    """Users whose ``kernel.user_hash`` is below this form the sample (about ``size`` of ``n``)."""
    if size <= 0:
        return 0
    return (1 << 63) if size >= n else int((1 << 63) * (size / n))


def order_sample(V: np.ndarray, h: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The sample's rows in (hash, id) order: the same matrix whatever the partitioning."""
    return np.ascontiguousarray(V[np.lexsort((ids, h))], dtype=np.float64)


def numpy_sample(V: np.ndarray, ids, seed: int, size: int) -> np.ndarray:
    """The driver-side sample of ``spark_sample``, from arrays."""
    from segmentation.transport.kernel import user_hash

    ids = np.arange(len(V)) if ids is None else np.asarray(ids)
    h = user_hash(ids, seed)
    keep = h < sample_threshold(len(V), size) if size < len(V) else np.ones(len(V), dtype=bool)
    return order_sample(np.asarray(V)[keep], h[keep], ids[keep].astype(str))


def numpy_runner(V: np.ndarray, batch_size: int | None = None, sample: np.ndarray | None = None) -> Runner:
    """Run passes over an in-memory value matrix (optionally in batches, as Spark would).
    ``run.sample`` (users x |T|, or None) warm-starts the dual solves (``search.run_searches``)."""
    V = np.ascontiguousarray(V, dtype=np.float64)

    def run(tasks):
        acc: dict = {}
        step = batch_size or max(len(V), 1)
        for s in range(0, max(len(V), 1), step):
            add_rows(acc, task_rows(V[s:s + step], tasks))
        run.passes += 1
        return results_of(tasks, acc)

    run.passes = 0
    run.sample = sample
    return run


def _values(batch, k: int) -> np.ndarray:
    return np.column_stack([batch.column(i).to_numpy(zero_copy_only=False).astype(np.float64)
                            for i in range(k)]) if batch.num_rows else np.zeros((0, k))


def spark_runner(df, columns: list[str], persist: bool = True) -> Runner:
    """Run passes as one ``mapInArrow`` job each over ``df[columns]`` (persisted if asked;
    the caller unpersists ``run.frame``). Rows are added per partition, then on the driver."""
    import pyarrow as pa

    k = len(columns)
    values = df.select(*columns)
    if persist:
        values = values.persist()
    schema = pa.schema([("task", pa.int32()), ("level", pa.int32()), ("mask", pa.int64()),
                        ("vec", pa.list_(pa.float64()))])

    def run(tasks):
        tasks_ = list(tasks)

        def fn(batches):
            acc: dict = {}
            for batch in batches:
                add_rows(acc, task_rows(_values(batch, k), tasks_))
            keys = list(acc)
            yield pa.RecordBatch.from_pydict(
                {"task": [q[0] for q in keys], "level": [q[1] for q in keys], "mask": [q[2] for q in keys],
                 "vec": [acc[q].tolist() for q in keys]}, schema=schema)

        rows = values.mapInArrow(fn, ROW_SCHEMA).collect()
        run.passes += 1
        acc: dict = {}
        add_rows(acc, ((r["task"], r["level"], r["mask"], r["vec"]) for r in rows))
        return results_of(tasks_, acc)

    run.passes = 0
    run.frame = values
    run.sample = None
    return run


def spark_sample(df, user_col: str, columns: list[str], n: int, seed: int, size: int) -> np.ndarray:
    """A seeded sample of about ``size`` users' values (all of them if n <= size), chosen by
    ``kernel.user_hash`` of the id (so independent of the partitioning), in one job; rows in
    (hash, id) order, as ``numpy_sample`` gives them. Driver memory: size x |T| numbers."""
    import pyarrow as pa

    from segmentation.data.encode import col_ref
    from segmentation.transport.kernel import user_hash

    k = len(columns)
    thr = sample_threshold(n, size)
    schema = pa.schema([("h", pa.int64()), ("id", pa.string())] + [(f"v{i}", pa.float64()) for i in range(k)])

    def fn(batches):
        for batch in batches:
            if batch.num_rows == 0:
                continue
            ids = batch.column(k).to_numpy(zero_copy_only=False)
            h = user_hash(ids, seed)
            keep = np.arange(len(h)) if size >= n else np.flatnonzero(h < thr)
            V = _values(batch, k)[keep]
            cols = {"h": h[keep], "id": ids[keep].astype(str)}
            cols.update({f"v{i}": V[:, i] for i in range(k)})
            yield pa.RecordBatch.from_pydict(cols, schema=schema)

    ddl = "h long, id string, " + ", ".join(f"v{i} double" for i in range(k))
    src = df.select(*[col_ref(c) for c in columns], col_ref(user_col))
    tbl = src.mapInArrow(fn, ddl).toArrow()
    h = tbl.column("h").to_numpy()
    ids = tbl.column("id").to_numpy(zero_copy_only=False)
    V = np.column_stack([tbl.column(f"v{i}").to_numpy() for i in range(k)]) if tbl.num_rows else np.zeros((0, k))
    return order_sample(V, h, ids)
