"""Segment choice over the cached design (policy.design_scores, assign.design_segment_shares):
row for row Spark's choice (its left-to-right scores, first maximum), ties and rounding-level
near-ties included, and the shares the Spark path reports for the same fit."""
from __future__ import annotations

import numpy as np
import pytest

from segmentation.data.blocks import make_block
from segmentation.policy.design_scores import (choose_segments, segment_counts,
                                               sequential_scores)


def _design(n, p, seed):
    rng = np.random.default_rng(seed)
    return np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))])


def test_choice_is_the_first_maximum_of_the_left_to_right_scores():
    Z = _design(5000, 12, 0)
    rng = np.random.default_rng(1)
    G = rng.normal(size=(4, 12)) * (rng.random((4, 12)) < 0.6)
    np.testing.assert_array_equal(choose_segments(Z, G), np.argmax(sequential_scores(Z, G), axis=1))


def test_ties_and_rounding_level_near_ties_are_decided_as_spark_decides_them():
    """Equal segments tie exactly (the first wins); a row where summing in another order flips
    the comparison (1e16 + 1 - 1e16 is 0 left to right, 1 otherwise) gets the left-to-right
    answer; a gap of one unit in the last place is resolved by the sequential scores."""
    G = np.array([[0.0, 1.0, 1.0, 1.0],
                  [0.5, 0.0, 0.0, 0.0],
                  [0.5, 0.0, 0.0, 0.0]])
    Z = np.array([[1.0, 1e16, 1.0, -1e16],        # left to right: s0 = 0 < s1 = 0.5
                  [1.0, 0.0, 0.0, 0.0],           # s0 = 0 < s1 = s2 = 0.5: the first of the tie
                  [1.0, 0.25, 0.25, 0.0],         # s0 = 0.5 = s1 = s2: segment 0
                  [1.0, 0.5, np.nextafter(0.0, 1.0), 0.0]])
    seq = sequential_scores(Z, G)
    assert seq[0, 0] == 0.0 and seq[0, 1] == 0.5
    want = np.argmax(seq, axis=1)
    np.testing.assert_array_equal(want, [1, 1, 0, 0])
    np.testing.assert_array_equal(choose_segments(Z, G), want)


def test_any_summation_order_within_the_bound_gives_the_same_choice(monkeypatch):
    """Whatever order the matrix product sums in (here: the left-to-right scores pushed by up
    to the rounding bound, towards the last segment), the rows it leaves undecided are scored
    again left to right: ties and near-ties still go as Spark's expressions decide."""
    from segmentation.policy import design_scores

    rng = np.random.default_rng(4)
    Z = _design(2000, 6, 4)
    Z[:500, 1:] = np.round(Z[:500, 1:] * 4) / 4          # exact ties between equal segments
    G = np.array([[0.1, 0.5, -0.25, 0.0, 0.75, 0.0],
                  [0.1, 0.5, -0.25, 0.0, 0.75, 0.0],
                  [0.2, 0.5, -0.25, 0.0, 0.5, 0.0],
                  [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    want = np.argmax(sequential_scores(Z, G), axis=1)
    m = int(np.count_nonzero(G, axis=1).max()) + 1
    gamma = m * 2.0 ** -53 / (1 - m * 2.0 ** -53)

    def skewed(Z_, G_):
        S = sequential_scores(Z_, G_)
        push = gamma * (np.abs(Z_) @ np.abs(G_).T) * np.linspace(-1.0, 1.0, G_.shape[0])
        return S + push * rng.uniform(0.5, 1.0, size=S.shape)

    monkeypatch.setattr(design_scores, "_product", skewed)
    assert (np.argmax(skewed(Z, G), axis=1) != want).any()     # the product alone would err
    np.testing.assert_array_equal(choose_segments(Z, G), want)


def test_counts_of_a_block_in_chunks(monkeypatch):
    from segmentation.policy import design_scores

    Z = _design(3001, 7, 2)
    G = np.random.default_rng(3).normal(size=(3, 7))
    block = make_block(Z, np.zeros(len(Z)), np.zeros(len(Z), int), None, n_creatives=1, n_folds=1)
    want = np.bincount(np.argmax(sequential_scores(block.X, G), axis=1), minlength=3)
    monkeypatch.setattr(design_scores, "CHUNK_BYTES", 7 * 8 * 100)        # 100-row chunks
    np.testing.assert_array_equal(segment_counts(block, G=G), want)
    assert segment_counts(block, G=G[:1]).tolist() == [len(Z)]


@pytest.mark.parametrize("store", ["files", "spark"])
def test_fit_reports_the_shares_of_spark_assignment(spark, tmp_path, store):
    """The shares a fit records (counted in its cached design, block files or Spark's cache)
    equal Spark's ``segment_shares`` over the input, exactly; standardised numeric covariates
    and categorical indicators."""
    import os

    from segmentation.config import parse_config
    from segmentation.data.simulate import simulate_arrays
    from segmentation.pipeline import fit_single, prepare
    from segmentation.policy.assign import design_segment_shares, segment_shares

    camp = simulate_arrays(3000, seed=5)
    os.makedirs(tmp_path / "exposures")
    camp.exposures.to_parquet(tmp_path / "exposures" / "part-0.parquet", index=False)
    cfg = parse_config({
        "data": {"exposures": str(tmp_path / "exposures"), "store": store,
                 "covariates": ["x1", "x2", "x3", "x4", "x5"], "categorical": ["region"]},
        "segments": {s: list(c) for s, c in camp.segments.items()},
        "model": {"lambda": 0.002, "alpha": 0.2},
        "output": {"model_dir": str(tmp_path / "model")}, "mlflow": {"enabled": False}})
    prepared = prepare(spark, cfg)
    try:
        model = fit_single(prepared, cfg)
        got = design_segment_shares(prepared.oracle, model)
        want = segment_shares(prepared.df, model, "user_id", rows_are_users=True)
    finally:
        prepared.release()
    assert got == want
    assert sum(got.values()) == pytest.approx(1.0) and len(set(got.values())) > 1
