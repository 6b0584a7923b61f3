"""simulate_campaign / simulate_arrays / simulate_users: files, determinism, truth consistency."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from segmentation.data.simulate import (
    load_truth, read_segments_csv, simulate_arrays, simulate_campaign, simulate_users, true_segments,
)


def _read_dir(path):
    return pq.read_table(path).to_pandas()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "campaign"
    truth = simulate_campaign(str(out), n_users=2_500, seed=11, chunk_size=1_000, chunks_per_file=2)
    return str(out), truth


def test_files_exist(written):
    out, truth = written
    assert sorted(os.listdir(out)) == ["creatives.csv", "exposures", "truth.json", "truth_users"]
    assert sorted(os.listdir(os.path.join(out, "exposures"))) == ["part-00000.parquet", "part-00001.parquet"]
    exp = _read_dir(os.path.join(out, "exposures"))
    assert list(exp.columns) == ["user_id", "creative", "response", "x1", "x2", "x3", "x4", "x5", "region"]
    assert exp.user_id.dtype == object and exp.response.dtype == np.int64
    assert len(exp) == 2_500 and exp.user_id.is_unique
    assert set(exp.response.unique()) <= {0, 1}
    assert pq.ParquetFile(os.path.join(out, "exposures", "part-00000.parquet")).num_row_groups == 2
    assert read_segments_csv(os.path.join(out, "creatives.csv")) == truth["segments"]
    assert truth["segments"] == {"seg1": ["cr01", "cr02", "cr03"], "seg2": ["cr04", "cr05", "cr06"],
                                 "seg3": ["cr07", "cr08"], "seg4": ["cr09", "cr10"]}
    loaded = load_truth(out)
    assert loaded["users_path"] == os.path.join(out, "truth_users")
    assert 0.05 <= loaded["response_rate"] <= 0.15
    assert loaded["feature_names"] == ["intercept", "x1", "x2", "x3", "x4", "x5",
                                       "region=east", "region=south", "region=west"]


def test_same_seed_same_files(written, tmp_path):
    out, _ = written
    again = tmp_path / "again"
    simulate_campaign(str(again), n_users=2_500, seed=11, chunk_size=1_000, chunks_per_file=2)
    for rel in ["truth.json", "creatives.csv", "exposures/part-00000.parquet",
                "exposures/part-00001.parquet", "truth_users/part-00000.parquet"]:
        with open(os.path.join(out, rel), "rb") as a, open(again / rel, "rb") as b:
            assert a.read() == b.read(), rel
    other = tmp_path / "other"
    simulate_campaign(str(other), n_users=2_500, seed=12, chunk_size=1_000, chunks_per_file=2)
    assert not _read_dir(str(other / "exposures")).equals(_read_dir(os.path.join(out, "exposures")))


def test_arrays_equal_files(written):
    out, truth = written
    sim = simulate_arrays(2_500, seed=11, chunk_size=1_000)
    pd.testing.assert_frame_equal(sim.exposures, _read_dir(os.path.join(out, "exposures")))
    pd.testing.assert_frame_equal(sim.users[["user_id", "true_segment"]],
                                  _read_dir(os.path.join(out, "truth_users")))
    assert sim.truth == {k: v for k, v in truth.items() if k != "out_dir"}


def test_truth_segments_are_argmax_of_gammas(written):
    out, truth = written
    exp = _read_dir(os.path.join(out, "exposures"))
    users = _read_dir(os.path.join(out, "truth_users"))
    merged = exp.merge(users, on="user_id")
    # rebuild the design by hand from the truth's feature names
    names = truth["feature_names"]
    X = np.column_stack([
        np.ones(len(merged)) if n == "intercept"
        else (merged["region"] == n.split("=", 1)[1]).to_numpy(float) if n.startswith("region=")
        else merged[n].to_numpy(float)
        for n in names
    ])
    gammas = np.array([truth["gamma"][s] for s in truth["segments"]])
    expected = np.array(list(truth["segments"]))[np.argmax(X @ gammas.T, axis=1)]
    assert (merged["true_segment"].to_numpy() == expected).all()
    assert (np.array(list(truth["segments"]))[true_segments(truth, merged)] == expected).all()
    shares = merged["true_segment"].value_counts(normalize=True)
    assert shares.min() > 0.1  # every segment is well represented


def test_deviant_creative_and_sparse_gammas(written):
    _, truth = written
    assert truth["deviant_creatives"] == ["cr03"]
    gamma = {s: np.array(v) for s, v in truth["gamma"].items()}
    for seg, creatives in truth["segments"].items():
        for c in creatives:
            beta = np.array(truth["beta"][c])
            if c == "cr03":
                assert np.linalg.norm(beta - gamma[seg]) > 1.0
            else:
                np.testing.assert_array_equal(beta, gamma[seg])
    G = np.array(list(gamma.values()))
    assert all((np.abs(g[1:]) > 0).sum() <= 2 for g in G)  # sparse slopes
    for i in range(len(G)):
        for j in range(i + 1, len(G)):
            assert np.abs(G[i, 1:] - G[j, 1:]).max() > 0.3  # clearly distinct


def test_overwrite_rules(tmp_path):
    out = tmp_path / "c"
    out.mkdir()  # empty: allowed
    simulate_campaign(str(out), n_users=50, seed=1)
    with pytest.raises(FileExistsError, match="not empty"):
        simulate_campaign(str(out), n_users=50, seed=2)
    simulate_campaign(str(out), n_users=60, seed=2, overwrite=True)
    assert json.load(open(out / "truth.json"))["n_users"] == 60
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no temp leftovers


def test_several_exposures_per_user():
    sim = simulate_arrays(300, seed=5, exposures_per_user=3)
    exp = sim.exposures
    assert len(exp) == 900
    per_user = exp.groupby("user_id").creative.nunique()
    assert (per_user == 3).all()
    assert sim.truth["n_exposures"] == 900


def test_simulate_users_are_the_campaign_users():
    sim = simulate_arrays(1_200, seed=8, chunk_size=500)
    users = simulate_users(1_200, seed=8, chunk_size=500)
    pd.testing.assert_frame_equal(users, sim.users)
    assert list(users.columns) == ["user_id", "x1", "x2", "x3", "x4", "x5", "region", "true_segment"]


def test_parameters():
    sim = simulate_arrays(400, seed=0, n_numeric=3, segment_sizes=(2, 1, 1), deviant=False)
    assert sim.truth["feature_names"][:4] == ["intercept", "x1", "x2", "x3"]
    assert sim.truth["deviant_creatives"] == []
    assert sim.segments == {"seg1": ["cr01", "cr02"], "seg2": ["cr03"], "seg3": ["cr04"]}


def test_exposure_weights_set_each_creatives_share():
    w = np.array([1.0, 10.0, 10.0, 5.0, 4.0, 10.0, 10.0, 10.0, 10.0, 20.0])
    sim = simulate_arrays(40_000, seed=3, exposure_weights=w)
    share = sim.exposures.creative.value_counts(normalize=True).reindex(sim.truth["creatives"])
    expected = w / w.sum()
    # binomial 99.9% bounds on each share
    se = np.sqrt(expected * (1 - expected) / 40_000)
    assert np.all(np.abs(share.to_numpy() - expected) < 3.3 * se), (share.to_numpy(), expected)
    assert sim.truth["exposure_weights"] == w.tolist()
    two = simulate_arrays(5_000, seed=3, exposures_per_user=2, exposure_weights=w).exposures
    assert (two.groupby("user_id").creative.nunique() == 2).all()
    with pytest.raises(ValueError, match="exposure_weights"):
        simulate_arrays(10, exposure_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="exposure_weights"):
        simulate_arrays(10, exposure_weights=[0.0] + [1.0] * 9)
