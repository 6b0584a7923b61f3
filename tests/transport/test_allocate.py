"""``segment allocate`` end to end through ``cli.main``: a simulated campaign with a control arm,
a single-lambda fit, then allocations from the model, from a value table and out of fold (held-out
DR estimate beside the true value known to the simulator); bad input exits 2 naming the culprit
with nothing written."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.special import expit

from segmentation.cli import main

N_USERS = 6000
COVS = ["x1", "x2", "x3", "x4", "x5"]


def write_yaml(raw, path) -> str:
    with open(path, "w") as fh:
        yaml.safe_dump(raw, fh)
    return str(path)


def base_config(root, segments) -> dict:
    return {
        "data": {"exposures": str(root / "data" / "exposures"), "covariates": COVS, "categorical": ["region"]},
        "segments": segments, "control": "ctrl",
        "model": {"lambda": 0.01, "alpha": 0.1},
        "cv": {"folds": 3, "seed": 0},
        "output": {"model_dir": str(root / "model")},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "allocate-test"},
        "spark": {"master": "local[2]"},
        "targeting": {"value_per_response": 10.0, "cost_per_contact": 0.05},
        "transport": {"max_treatments": 3, "min_share": {"ctrl": 0.1}, "max_share": {"cr01": 0.3, "cr04": 0.25},
                      "costs": {"cr02": 0.1}},
    }


@pytest.fixture(scope="module")
def campaign(spark, tmp_path_factory):
    """6000 simulated users with a control arm, fitted once (single lambda) through the CLI."""
    from segmentation.data.simulate import simulate_arrays
    from segmentation.evaluation.simulate import add_control_arm

    root = tmp_path_factory.mktemp("allocate")
    camp = add_control_arm(simulate_arrays(N_USERS, seed=21, deviant=False), seed=21)
    (root / "data" / "exposures").mkdir(parents=True)
    camp.exposures.to_parquet(root / "data" / "exposures" / "part-0.parquet", index=False)
    raw = base_config(root, camp.segments)
    path = write_yaml(raw, root / "config.yaml")
    assert main(["fit", path, "--set", "mlflow.enabled=false"]) == 0
    return {"root": root, "raw": raw, "config": path, "campaign": camp}


@pytest.fixture(scope="module")
def tables(spark, tmp_path_factory):
    """A config whose values come from tables (no model, no exposures read)."""
    root = tmp_path_factory.mktemp("allocate-tables")
    return {"root": root, "raw": base_config(root, {"s": ["a", "b"]})}


def read_json(path):
    with open(path) as fh:
        return json.load(fh)


def numpy_values(model_dir, users: pd.DataFrame, costs: dict, vpr: float) -> tuple[np.ndarray, list[str]]:
    from segmentation.model import SegmentationModel

    m = SegmentationModel.load(model_dir)
    cost = np.array([costs[c] for c in m.creatives])
    return vpr * expit(m.design(users) @ m.beta_fit.T) - cost, list(m.creatives)


@pytest.mark.slow
def test_allocate_from_the_model(spark, campaign, capsys):
    root, raw = campaign["root"], campaign["raw"]
    assert main(["allocate", campaign["config"], "--set", "mlflow.tags.airflow.ds=2026-12-01"]) == 0
    out = root / "model" / "allocation"
    for name in ("allocation.json", "allocation.md", "allocation_curve.png", "assignment"):
        assert (out / name).exists(), name
    assert "# Coarse personalization" in capsys.readouterr().out
    res = read_json(out / "allocation.json")
    plan = res["plan"]
    assert res["values"]["kind"] == "model" and res["values"]["out_of_fold"] is False
    assert "ctrl" in plan["offered"] and len(plan["offered"]) <= 3
    assert [r["S"] for r in plan["curve"]] == [1, 2, 3]
    assert plan["n_users"] == N_USERS and res["heldout"] is None
    assert abs(plan["duality_gap"]) <= 1e-6 * abs(plan["total_value"])
    # shares meet the limits exactly, counted from the written table
    got = pd.read_parquet(out / "assignment")
    assert list(got.columns) == ["user_id", "treatment", "value"] and got["user_id"].is_unique
    counts = got["treatment"].value_counts()
    for t, lim in res["limits"].items():
        assert counts.get(t, 0) == lim["users"]
        assert math.ceil(lim["min_share"] * N_USERS - 1e-9) <= lim["users"] <= math.floor(lim["max_share"] * N_USERS + 1e-9)
    assert counts["ctrl"] >= 600
    assert set(counts.index) == set(plan["offered"])
    # every row's value is the model's value of its treatment (numpy from model.json)
    users = campaign["campaign"].exposures.drop_duplicates("user_id").set_index("user_id").loc[got["user_id"]]
    costs = {c: (0.0 if c == "ctrl" else 0.05) + (0.1 if c == "cr02" else 0.0)
             for c in campaign["campaign"].truth["beta"]}
    V, names = numpy_values(str(root / "model"), users.reset_index(), costs, 10.0)
    col = np.array([names.index(t) for t in got["treatment"]])
    np.testing.assert_allclose(got["value"].to_numpy(), V[np.arange(len(V)), col], rtol=0, atol=1e-10)
    assert got["value"].sum() == pytest.approx(plan["total_value"], rel=1e-12)
    # and the plan is the optimum of the capacity-constrained problem over its offered set
    assert plan["total_value"] <= V.max(axis=1).sum() + 1e-9
    # MLflow: one allocate run with the files and metrics
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=raw["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name("allocate-test")
    runs = client.search_runs([exp.experiment_id], "tags.`segmentation.kind` = 'allocate'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "allocation")}
    assert arts == {"allocation/allocation.json", "allocation/allocation.md", "allocation/allocation_curve.png"}
    assert runs[0].data.metrics["allocation.total_value"] == pytest.approx(plan["total_value"])
    assert runs[0].data.params["transport.max_treatments"] == "3"
    assert runs[0].data.tags["airflow.ds"] == "2026-12-01"          # mlflow.tags, as on fit runs


def test_allocate_from_a_value_table(spark, tables):
    root = tables["root"]
    rng = np.random.default_rng(3)
    n = 2000
    pdf = pd.DataFrame({"uid": np.arange(n) * 3 + 1, "a": rng.normal(size=n), "b": rng.normal(size=n) + 0.2,
                        "c": rng.normal(size=n) - 0.1, "d": np.round(rng.normal(size=n), 1)})
    pdf.to_parquet(root / "values.parquet", index=False)
    raw = dict(tables["raw"], mlflow={"enabled": False})
    raw["transport"] = {"max_treatments": 2, "values": str(root / "values.parquet"), "user_col": "uid",
                        "max_share": {"a": 0.4}, "output_dir": str(root / "alloc-table")}
    assert main(["allocate", write_yaml(raw, root / "table.yaml")]) == 0
    res = read_json(root / "alloc-table" / "allocation.json")
    assert res["values"]["kind"] == "table" and res["values"]["treatments"] == ["a", "b", "c", "d"]
    got = pd.read_parquet(root / "alloc-table" / "assignment").merge(pdf, on="uid")
    assert len(got) == n and set(got["treatment"]) <= set(res["plan"]["offered"])
    np.testing.assert_array_equal(got["value"], got.apply(lambda r: r[r["treatment"]], axis=1))
    for t, lim in res["limits"].items():
        assert (got["treatment"] == t).sum() <= math.floor(lim["max_share"] * n + 1e-9)


@pytest.mark.slow
def test_out_of_fold_allocation_is_evaluated_held_out_next_to_the_truth(spark, campaign):
    """Out-of-fold values, the allocation evaluated by DR on the held-out exposures beside the
    baselines; the simulator knows every user's true value under every creative: the DR
    estimates of the allocation, full personalization and random, and the share recouped, lie
    within 4 standard errors of the truth on the same users."""
    from segmentation.config import parse_config
    from segmentation.data.simulate import design_from_truth
    from segmentation.workflow import run_allocate

    root, camp = campaign["root"], campaign["campaign"]
    out = root / "alloc-oof"
    raw = dict(campaign["raw"], mlflow={"enabled": False})
    raw["transport"] = dict(raw["transport"], out_of_fold=True, output_dir=str(out))
    run = run_allocate(parse_config(raw), spark=spark)
    res = json.loads((out / "allocation.json").read_text())
    ho = res["heldout"]
    assert res["values"]["out_of_fold"] is True and ho["folds"] == 3
    assert {"allocation", "full", "segment", "kmeans", "best_single", "random", "control"} <= set(ho["policies"])
    for row in ho["policies"].values():
        e = row["value"]
        assert e["ci_low"] < e["estimate"] < e["ci_high"]
    # the truth: every user's true value under each deterministic policy
    got = pd.read_parquet(out / "assignment")
    full = run.policies["full"].toPandas().set_index("user_id")["creative_index"].loc[got["user_id"]].to_numpy()
    users = camp.exposures.drop_duplicates("user_id").set_index("user_id").loc[got["user_id"]].reset_index()
    truth = camp.truth
    creatives = list(truth["beta"])
    B = np.array([truth["beta"][c] for c in creatives])
    costs = np.array([(0.0 if c == "ctrl" else 0.05) + (0.1 if c == "cr02" else 0.0) for c in creatives])
    TV = 10.0 * expit(design_from_truth(truth, users) @ B.T) - costs      # true value per user, treatment
    rows = np.arange(len(TV))
    true = {"allocation": TV[rows, [creatives.index(t) for t in got["treatment"]]].mean(),
            "full": TV[rows, full].mean(),
            "random": TV[:, [k for k, c in enumerate(creatives) if c != "ctrl"]].mean()}
    for P, tv in true.items():
        e = ho["policies"][P]["value"]
        assert abs(e["estimate"] - tv) <= 4 * e["se"], (P, e, tv)
    share = (true["allocation"] - true["random"]) / (true["full"] - true["random"])
    est = ho["share_of_full"]
    assert abs(est["estimate"] - share) <= 4 * est["se"], (est, share)
    assert true["allocation"] > true["random"]                  # the allocation beats random, truly


@pytest.mark.parametrize("sets,culprit", [
    (["transport.max_treatments=40"], "transport.max_treatments"),
    (["transport.min_share={ctrl: 0.6, cr01: 0.5}"], "transport.min_share"),
    (["transport.max_share={cr01: 0.1, cr02: 0.1, cr03: 0.1, cr04: 0.1, cr05: 0.1, cr06: 0.1, cr07: 0.1, "
      "cr08: 0.1, cr09: 0.1, cr10: 0.1, ctrl: 0.2}"], "transport.max_share"),
    (["transport.treatments=[cr01, nope, ctrl]", "transport.max_share={}", "transport.costs={}"], "nope"),
    (["transport.max_share={zz: 0.5}"], "zz"),
])
@pytest.mark.slow
def test_bad_config_exits_2_names_the_key_writes_nothing(campaign, capsys, sets, culprit):
    out = campaign["root"] / "bad-out"
    args = ["allocate", campaign["config"], "--set", f"transport.output_dir={out}", "--set", "mlflow.enabled=false"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    assert culprit in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("frame,extra,culprit", [
    (pd.DataFrame({"uid": [1, 2], "a": [1.0, 2.0]}), {"treatments": ["a", "missing"]}, "missing"),
    (pd.DataFrame({"uid": [1, 2], "a": [1.0, 2.0], "s": ["x", "y"]}), None, "s (string)"),
    (pd.DataFrame({"uid": [1, 2, 3], "a": [1.0, np.nan, np.inf], "b": [None, 1.0, 2.0]}), None,
     "value column 'a': 1 null, 1 inf; value column 'b': 1 null"),   # pyarrow stores pandas NaN as null
    (pd.DataFrame({"uid": [1, 1, 2], "a": [1.0, 2.0, 3.0], "b": [0.0, 0.0, 0.0]}), None, "1 duplicate user id(s) in 'uid'"),
    (pd.DataFrame({"uid": [1, 2], "a": [1.0, 2.0], "b": [0.0, 0.0]}), {"max_share": {"a": 0.3, "b": 0.3}}, "transport.max_share"),
])
def test_bad_value_table_exits_2_names_the_column_writes_nothing(tables, capsys, frame, extra, culprit):
    root = tables["root"]
    path = root / f"bad-{abs(hash(culprit))}.parquet"
    frame.to_parquet(path, index=False)
    out = root / "bad-table-out"
    raw = dict(tables["raw"], mlflow={"enabled": False})
    raw["transport"] = {"max_treatments": 1, "values": str(path), "user_col": "uid", "output_dir": str(out)}
    raw["transport"].update(extra or {})
    assert main(["allocate", write_yaml(raw, root / "bad-table.yaml")]) == 2
    assert culprit in capsys.readouterr().err
    assert not out.exists()
    assert not [p for p in os.listdir(root) if p.startswith(".bad-table-out")]
