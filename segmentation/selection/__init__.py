"""Choosing lambda and alpha: the warm-started path, joint cross-validation, the selection rule.

- ``grid``: the null fits, lambda_max per alpha and the log-spaced lambda grid;
- ``cv``: ``cross_validate`` (every fold and alpha, plus the full-data path, in shared passes)
  and ``select`` (the ``min`` / ``1se`` rule);
- ``jobs``: Spark job counting with a job group and the status tracker.
"""
from segmentation.selection.cv import CVResult, PathPoint, cross_validate, select
from segmentation.selection.grid import lambda_grid, null_fits

__all__ = ["CVResult", "PathPoint", "cross_validate", "select", "lambda_grid", "null_fits"]
