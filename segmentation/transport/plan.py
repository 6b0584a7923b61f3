"""The allocation plan: which S treatments to offer, who gets which, and the value-vs-S curve.

``plan_allocation(df, user_col, columns, names, cfg)`` is the one entry point the workflow calls.
``df`` holds one row per user and one value column per candidate treatment (``columns[t]`` holds
v_it for the treatment labelled ``names[t]``); ``cfg`` is the ``transport`` config section.

Everything per user stays in Spark; the driver holds prices and per-treatment sums.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segmentation.errors import DataValidationError
from segmentation.transport.capacity import capacities
from segmentation.transport.choose import choose, spark_set_values
from segmentation.transport.spark import (TREATMENT_COL, VALUE_COL, check_value_columns,
                                          count_bad_values, solve_spark)


@dataclass
class AllocationPlan:
    """What ``plan_allocation`` decided, and the evidence for it.

    ``curve`` rows: ``{"S", "value", "share_of_full", "offered"}``: the best value found with at
    most S treatments (under the capacity limits) as a share of ``full_value``, the value of full
    personalisation (every user their best of all treatments, no limits).
    """

    offered: list[str]
    prices: dict[str, float]
    shares: dict[str, float]
    min_share: dict[str, float]
    max_share: dict[str, float]
    total_value: float
    mean_value: float
    duality_gap: float
    curve: list[dict]
    full_value: float
    method: dict
    spark_jobs: int | None
    n_users: int
    assignment: Any = field(repr=False)          # DataFrame: user_col, treatment, value

    def to_json(self) -> dict:
        """A JSON-safe dict of everything but the assignment DataFrame."""
        def clean(x):
            if isinstance(x, dict):
                return {str(k): clean(v) for k, v in x.items()}
            if isinstance(x, (list, tuple)):
                return [clean(v) for v in x]
            if isinstance(x, (np.integer,)):
                return int(x)
            if isinstance(x, (np.floating, float)):
                x = float(x)
                return x if math.isfinite(x) else None
            return x

        return clean({
            "offered": self.offered, "prices": self.prices, "shares": self.shares,
            "min_share": self.min_share, "max_share": self.max_share, "n_users": self.n_users,
            "total_value": self.total_value, "mean_value": self.mean_value,
            "duality_gap": self.duality_gap, "full_value": self.full_value,
            "share_of_full": self.total_value / self.full_value if self.full_value else None,
            "curve": self.curve, "method": self.method, "spark_jobs": self.spark_jobs,
            "columns": {"treatment": TREATMENT_COL, "value": VALUE_COL},
        })


def _forced(names: list[str], min_share: dict[str, float]) -> list[int]:
    unknown = sorted(set(min_share) - set(names))
    if unknown:
        raise DataValidationError(f"transport.min_share: unknown treatment(s) {unknown} (treatments: {names})")
    return [names.index(t) for t, s in min_share.items() if float(s) > 0]


def plan_allocation(df, user_col: str, columns: list[str], names: list[str], cfg) -> AllocationPlan:
    """Choose at most ``cfg.max_treatments`` treatments and assign every user of ``df``."""
    from segmentation.selection.jobs import count_jobs

    if len(columns) != len(names):
        raise ValueError(f"{len(columns)} value columns but {len(names)} treatment names")
    for key in ("max_share",):
        unknown = sorted(set(getattr(cfg, key)) - set(names))
        if unknown:
            raise DataValidationError(f"transport.{key}: unknown treatment(s) {unknown} (treatments: {names})")
    forced = _forced(names, cfg.min_share)
    check_value_columns(df, user_col, columns)
    with count_jobs(df.sparkSession, "transport") as jc:
        bad = count_bad_values(df, columns)
        if bad:
            raise DataValidationError(f"value column(s) hold nulls or NaN (count per column): {bad}")
        n = df.count()
        f = spark_set_values(df, columns)
        full = float(f([list(range(len(names)))])[0])
        curve = []
        chosen = None
        for S in range(1, cfg.max_treatments + 1):
            if S < len(forced):
                curve.append({"S": S, "value": None, "share_of_full": None, "offered": None})
                continue
            c = choose(f, len(names), S, forced, cfg.exact_limit)
            curve.append({"S": S, "value": c.value, "share_of_full": c.value / full if full else None,
                          "offered": [names[t] for t in c.treatments]})
            chosen = c
        offered = [names[t] for t in chosen.treatments]
        cols = [columns[t] for t in chosen.treatments]
        caps = capacities(offered, n, cfg.min_share, cfg.max_share)
        sa = solve_spark(df, user_col, cols, caps, names=offered, seed=cfg.seed, tol=cfg.tol)
    curve[-1]["value"] = sa.value
    curve[-1]["share_of_full"] = sa.value / full if full else None
    return AllocationPlan(
        offered=offered,
        prices={t: float(p) for t, p in zip(offered, sa.result.prices)},
        shares={t: float(c) / n for t, c in zip(offered, sa.counts)},
        min_share={t: float(cfg.min_share.get(t, 0.0)) for t in offered},
        max_share={t: float(cfg.max_share.get(t, 1.0)) for t in offered},
        total_value=sa.value, mean_value=sa.value / n, duality_gap=float(sa.gap),
        curve=curve, full_value=full,
        method={"choice": chosen.method, "capacity_aware": False, "passes": chosen.passes,
                "price_updates": sa.result.iterations},
        spark_jobs=jc.jobs, n_users=n, assignment=sa.assignment)
