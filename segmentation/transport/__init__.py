"""Coarse personalization by optimal transport (issue 10; Zhang and Misra, arXiv 2204.05793).

Given a value v_i(t) for every user i and treatment t, offer at most S treatments and assign
every user to one of them, maximising sum_i v_i(t_i), with optional capacity limits
``min_share_t * n <= #{i: t_i = t} <= max_share_t * n``.

- ``capacity``: share limits -> integer head-count bounds, with feasibility checks.
- ``kernel``: the per-batch sums one price update needs (pure numpy; Spark runs it per partition).
- ``dual``: the capacity-constrained assignment solved through its dual (one price per treatment).
- ``spark``: the same algorithm over a DataFrame of value columns, one Spark job per update.
- ``choose``: which S treatments (greedy, swap refinement, exact enumeration), value-vs-S curve.
"""
