"""``segment allocate`` over a real Spark Connect server gives local mode's allocation.

The model is fitted once in this process (local session); the same config is allocated in local
mode (in process) and by the CLI in a subprocess with ``SPARK_REMOTE`` set: same offered set,
prices, head counts and the same assignment table row for row.
"""
from __future__ import annotations

import pytest

from e2e_common import allocation_config, assert_same_allocation, with_output_dir, write_yaml
from harness import run_cli, spark_env, venv_prefix

pytestmark = pytest.mark.slow

SEGMENT = str(venv_prefix() / "bin" / "segment")


@pytest.fixture(scope="module")
def fitted(spark, tmp_path_factory):
    from segmentation.config import parse_config
    from segmentation.workflow import run_fit

    root = tmp_path_factory.mktemp("connect-allocate")
    raw = allocation_config(root)
    run_fit(parse_config(raw), spark=spark)
    return {"root": root, "raw": raw}


def test_allocate_over_connect_equals_local_mode(spark, server, fitted):
    from segmentation.config import parse_config
    from segmentation.workflow import run_allocate

    root, raw = fitted["root"], fitted["raw"]
    run_allocate(parse_config(with_output_dir(raw, root / "local")), spark=spark)
    remote = write_yaml(with_output_dir(raw, root / "connect"), root / "connect.yaml")
    env = spark_env({"SPARK_REMOTE": server.url}, local_ip=None)
    r = run_cli([SEGMENT, "allocate", remote], env=env, timeout=900, server_pid=server.pid,
                server_log=server.log_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "addArtifacts" in r.stderr
    assert_same_allocation(spark, root / "connect", root / "local")
