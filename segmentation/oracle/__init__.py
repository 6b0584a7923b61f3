"""Likelihood oracles: loss, gradient and curvature of the Bernoulli log-likelihood.

``LocalOracle`` (numpy, in memory) and ``SparkOracle`` (per-partition blocks on executors)
share one interface (``Oracle``) and one kernel (``kernel.block_statistics``), so they give
the same numbers up to floating-point summation order.
"""
from segmentation.oracle.base import Oracle, OracleResult
from segmentation.oracle.local import LocalOracle

__all__ = ["Oracle", "OracleResult", "LocalOracle"]
