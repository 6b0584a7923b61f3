"""Make the harness module importable (tests/ is not a package); the Spark Connect server
fixture the Connect end-to-end tests share."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from harness import ConnectServer, start_or_skip  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Spark Connect server (local[2], 2 shuffle partitions) on 127.0.0.1, one per test
    module, stopped by pid at the module's end; skipped where the harness cannot run one."""
    srv = start_or_skip(lambda: ConnectServer(master="local[2]", conf={"spark.sql.shuffle.partitions": "2"},
                                              log_dir=tmp_path_factory.mktemp("connect-logs")),
                        "Spark Connect server")
    yield srv
    srv.stop()
