"""Counting Spark jobs: every job started inside ``count_jobs`` carries one job group, and the
status tracker lists the jobs of that group afterwards.

The count is what the cross-validation design is judged by (a job is one scheduling round
trip, the fixed cost of a pass); it includes every job of the block, not only the oracle's.
The status tracker keeps the last ``spark.ui.retainedJobs`` jobs (default 1000): a block with
more jobs than that is under-counted, so ``JobCount.exact`` says whether the count can be
trusted (it compares with the number of job ids seen, not with anything Spark forgot).
Spark Connect has no status tracker: there ``jobs`` is None (not counted).
"""
from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field


@dataclass
class JobCount:
    group: str
    job_ids: list[int] = field(default_factory=list)
    retained_limit: int = 1000
    counted: bool = True

    @property
    def jobs(self) -> int | None:
        return len(self.job_ids) if self.counted else None

    @property
    def exact(self) -> bool:
        return self.counted and self.jobs < self.retained_limit


@contextlib.contextmanager
def count_jobs(spark, name: str = "segmentation", description: str | None = None):
    """``with count_jobs(spark, "cv") as jc: ...`` then ``jc.jobs``. ``spark=None`` (a local
    oracle) counts nothing. The previous job group of the thread is restored on exit."""
    from segmentation.spark_session import is_connect

    jc = JobCount(group=f"{name}-{uuid.uuid4().hex[:8]}")
    if spark is None:
        yield jc
        return
    if is_connect(spark):
        jc.counted = False
        yield jc
        return
    sc = spark.sparkContext
    prev_group = sc.getLocalProperty("spark.jobGroup.id")
    prev_desc = sc.getLocalProperty("spark.job.description")
    try:
        jc.retained_limit = int(sc.getConf().get("spark.ui.retainedJobs", "1000"))
    except (TypeError, ValueError):
        pass
    sc.setJobGroup(jc.group, description or name)
    try:
        yield jc
    finally:
        jc.job_ids = sorted(sc.statusTracker().getJobIdsForGroup(jc.group))
        if prev_group is not None:
            sc.setJobGroup(prev_group, prev_desc or "")
        else:
            sc.setLocalProperty("spark.jobGroup.id", None)
            sc.setLocalProperty("spark.job.description", prev_desc)
