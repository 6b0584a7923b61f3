"""Sanitised names that must stay unique: MLflow metric keys and ``score_<segment>`` columns
(no Spark, no MLflow server: the key rules are MLflow's own validator)."""
from __future__ import annotations

import re

from mlflow.utils.validation import _validate_metric_name

from segmentation.policy.assign import score_column_names
from segmentation.tracking import pyfunc_model
from segmentation.tracking.mlflow_run import metric_keys

ODD = ["seg a", 'seg"a', "seg'a", "x/", "a//b", "..", "ünï", "", "seg.1", "seg_a-2", "/abs",
       "Seg A", "seg A"]


def test_metric_keys_are_valid_unique_and_stable():
    keys = metric_keys(ODD)
    assert set(keys) == set(ODD)
    assert len(set(keys.values())) == len(ODD)
    for k in keys.values():
        _validate_metric_name(f"fusion_test_p.{k}")          # raises MlflowException if invalid
    assert keys["seg a"] == "seg a" and keys["seg.1"] == "seg.1"   # valid names kept as they are
    assert metric_keys(ODD) == keys


def test_score_columns_unique_case_insensitively_and_same_in_pyfunc():
    cols = score_column_names(ODD)
    assert len({c.lower() for c in cols}) == len(ODD)
    assert all(re.fullmatch(r"score_[0-9A-Za-z_]*", c) for c in cols), cols
    assert cols == pyfunc_model.score_column_names(ODD)
    assert cols[0] == "score_seg_a" and cols[1] == "score_seg_a_2"
