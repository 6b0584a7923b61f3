"""Penalty, proximal operators and solvers. Pure numpy: nothing here imports Spark."""
