"""``segment allocate`` over a real Spark Connect server gives local mode's allocation.

The model is fitted once in this process (local session); the same config is allocated in local
mode (in process) and by the CLI in a subprocess with ``SPARK_REMOTE`` set: same offered set,
prices, head counts and the same assignment table row for row.
"""
from __future__ import annotations

import json

import pytest
from chispa import assert_df_equality

from e2e_common import write_yaml
from harness import run_cli, spark_env, venv_prefix

pytestmark = pytest.mark.slow

SEGMENT = str(venv_prefix() / "bin" / "segment")


@pytest.fixture(scope="module")
def fitted(spark, tmp_path_factory):
    from segmentation.config import parse_config
    from segmentation.data.simulate import simulate_arrays
    from segmentation.evaluation.simulate import add_control_arm
    from segmentation.workflow import run_fit

    root = tmp_path_factory.mktemp("connect-allocate")
    camp = add_control_arm(simulate_arrays(3000, seed=8, deviant=False), seed=8)
    (root / "exposures").mkdir()
    camp.exposures.to_parquet(root / "exposures" / "part-0.parquet", index=False)
    raw = {
        "data": {"exposures": str(root / "exposures"), "covariates": ["x1", "x2", "x3", "x4", "x5"],
                 "categorical": ["region"]},
        "segments": camp.segments, "control": "ctrl", "model": {"lambda": 0.01, "alpha": 0.1},
        "output": {"model_dir": str(root / "model")}, "mlflow": {"enabled": False},
        "spark": {"spark.sql.shuffle.partitions": "2"},
        "targeting": {"value_per_response": 10.0},
        "transport": {"max_treatments": 3, "min_share": {"ctrl": 0.1}, "max_share": {"cr01": 0.3}},
    }
    run_fit(parse_config(raw), spark=spark)
    return {"root": root, "raw": raw}


def test_allocate_over_connect_equals_local_mode(spark, server, fitted):
    from segmentation.config import parse_config
    from segmentation.workflow import run_allocate

    root, raw = fitted["root"], fitted["raw"]
    local = dict(raw, transport=dict(raw["transport"], output_dir=str(root / "local")))
    run_allocate(parse_config(local), spark=spark)
    remote = dict(raw, transport=dict(raw["transport"], output_dir=str(root / "connect")))
    env = spark_env({"SPARK_REMOTE": server.url}, local_ip=None)
    r = run_cli([SEGMENT, "allocate", write_yaml(remote, root / "connect.yaml")], env=env,
                timeout=900, server_pid=server.pid, server_log=server.log_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "addArtifacts" in r.stderr
    got = json.loads((root / "connect" / "allocation.json").read_text())["plan"]
    want = json.loads((root / "local" / "allocation.json").read_text())["plan"]
    assert got["offered"] == want["offered"] and got["shares"] == want["shares"]
    for t in want["offered"]:
        assert got["prices"][t] == pytest.approx(want["prices"][t], rel=1e-9, abs=1e-12)
    assert got["total_value"] == pytest.approx(want["total_value"], rel=1e-12)
    assert [r_["offered"] for r_ in got["curve"]] == [r_["offered"] for r_ in want["curve"]]
    assert_df_equality(spark.read.parquet(str(root / "connect" / "assignment")),
                       spark.read.parquet(str(root / "local" / "assignment")), ignore_row_order=True)
