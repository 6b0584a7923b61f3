"""Off-policy evaluation of the segmentation against the baselines a marketer would try.

Entry point: ``run_evaluation(spark, cfg, model, prepared=None, mlflow_run_id=None)`` (``run``);
the estimator math is pure numpy (``estimators``, ``policies``, ``summary``), the Spark side
(``spark``) only computes per-row terms and aggregates them per user then overall.
"""
from __future__ import annotations

__all__ = ["run_evaluation", "evaluate_config", "EvaluationResult"]


def __getattr__(name):
    if name in __all__:
        from segmentation.evaluation import run

        return getattr(run, name)
    raise AttributeError(name)
