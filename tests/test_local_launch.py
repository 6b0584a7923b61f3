"""What a driver JVM launched by this tool gets (``local_launch``, ``worker_daemon``,
``pipeline.fit_jvm_role``): the rules, then a real local session that shows them applied."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from segmentation.config import parse_config
from segmentation.errors import ConfigError
from segmentation.local_launch import (C1_ONLY, DAEMON_CONF, DAEMON_MODULE, ENV_DAEMON, ENV_JIT,
                                       jit_options, worker_daemon_conf)
from segmentation.pipeline import fit_jvm_role
from segmentation.worker_daemon import installed_first


def _install(root, *, with_zips=True):
    """A fake pip-installed pyspark under ``root`` (site-packages layout); its zips' paths."""
    pkg = root / "pyspark"
    (pkg / "python" / "lib").mkdir(parents=True)
    (pkg / "daemon.py").write_text("")
    zips = [pkg / "python" / "lib" / "pyspark.zip", pkg / "python" / "lib" / "py4j-0.10.9.9-src.zip"]
    if with_zips:
        for z in zips:
            z.write_bytes(b"")
    return [str(z) for z in zips]


def test_zips_of_the_installed_pyspark_go_last(tmp_path):
    site = tmp_path / "site-packages"
    zips = _install(site)
    path = zips + ["/opt/spark/jars/spark-core.jar", "/usr/lib/python311.zip", str(site)]
    assert installed_first(path) == ["/opt/spark/jars/spark-core.jar", "/usr/lib/python311.zip",
                                     str(site)] + zips


def test_zips_of_another_spark_home_stay_first(tmp_path):
    site = tmp_path / "site-packages"
    _install(site)
    dist = tmp_path / "spark-dist"
    other = _install(dist)                  # a Spark distribution's zips, not site's package
    path = other + [str(site)]
    assert installed_first(path) == path
    mixed = [other[0], _install(tmp_path / "third")[1], str(site)]
    assert installed_first(mixed) == mixed  # not every zip is the installed package's


def test_without_an_installed_pyspark_the_path_is_unchanged(tmp_path):
    zips = _install(tmp_path / "spark-home")
    path = zips + [str(tmp_path / "empty-site")]
    assert installed_first(path) == path
    assert installed_first(["/a", "/b.zip"]) == ["/a", "/b.zip"]   # no Spark zip at all


def test_c1_only_for_an_orchestrating_driver(monkeypatch):
    monkeypatch.delenv(ENV_JIT, raising=False)
    monkeypatch.delenv("SPARK_SUBMIT_OPTS", raising=False)
    assert jit_options("orchestrator") == C1_ONLY
    assert jit_options("general") is None
    monkeypatch.setenv(ENV_JIT, "full")
    assert jit_options("orchestrator") is None
    monkeypatch.setenv(ENV_JIT, "c1")
    assert jit_options("general") == C1_ONLY
    # the caller's own JIT choice is left alone
    assert jit_options("orchestrator", {"spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=4"}) is None
    monkeypatch.setenv("SPARK_SUBMIT_OPTS", "-XX:-TieredCompilation")
    assert jit_options("orchestrator") is None
    monkeypatch.setenv(ENV_JIT, "fast")
    with pytest.raises(ConfigError, match=ENV_JIT):
        jit_options("orchestrator")
    with pytest.raises(ValueError, match="role"):
        jit_options("driver")


def test_worker_daemon_only_for_local_masters_running_this_python(monkeypatch):
    monkeypatch.delenv(ENV_DAEMON, raising=False)
    monkeypatch.delenv("SPARK_HOME", raising=False)
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    assert worker_daemon_conf({}, "local[2]") == {DAEMON_CONF: DAEMON_MODULE}
    assert worker_daemon_conf({}, "spark://host:7077") == {}
    assert worker_daemon_conf({}, None) == {}
    assert worker_daemon_conf({DAEMON_CONF: "my.daemon"}, "local[2]") == {}
    assert worker_daemon_conf({"spark.pyspark.python": "/usr/bin/python3.9"}, "local[2]") == {}
    monkeypatch.setenv("SPARK_HOME", "/opt/spark-4.0")        # a distribution, not the package
    assert worker_daemon_conf({}, "local[2]") == {}
    import pyspark

    monkeypatch.setenv("SPARK_HOME", os.path.dirname(pyspark.__file__))
    assert worker_daemon_conf({}, "local[*]") == {DAEMON_CONF: DAEMON_MODULE}
    monkeypatch.setenv(ENV_DAEMON, "off")
    assert worker_daemon_conf({}, "local[2]") == {}


def _cfg(tmp_path, data=None, spark=None):
    return parse_config({
        "data": {"exposures": str(tmp_path / "exposures.parquet"), "user_col": "user_id",
                 "creative_col": "creative", "response_col": "response",
                 "covariates": ["x1"], **(data or {})},
        "segments": {"a": ["c1", "c2"]},
        "model": {"lambda": 0.01, "alpha": 0.5},
        "output": {"model_dir": str(tmp_path / "model")},
        "spark": spark or {"master": "local[2]"},
    })


def test_fit_role_from_the_config(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARK_REMOTE", raising=False)
    assert fit_jvm_role(_cfg(tmp_path))[0] == "orchestrator"
    assert fit_jvm_role(_cfg(tmp_path, {"exposures": str(tmp_path / "e.csv")}))[0] == "general"
    assert fit_jvm_role(_cfg(tmp_path, {"store": "spark"}))[0] == "general"
    assert fit_jvm_role(_cfg(tmp_path, {"reader": "spark"}))[0] == "general"
    assert fit_jvm_role(_cfg(tmp_path, spark={"master": "spark://h:7077"}))[0] == "general"
    assert fit_jvm_role(_cfg(tmp_path, spark={"spark.master": "local[*]"}))[0] == "orchestrator"
    assert fit_jvm_role(_cfg(tmp_path, spark={"remote": "sc://localhost:15002"}))[0] == "general"


_PROBE = r"""
import json, os, sys
from segmentation.spark_session import get_or_create_spark
from segmentation.spark_tasks import run_indexed

spark = get_or_create_spark("launch-probe", master="local[1]", jvm_role=sys.argv[1],
                            conf={"spark.ui.enabled": "false"})

def probe(i):
    import os, sys
    import pyspark
    daemon = open(f"/proc/{os.getppid()}/cmdline").read().split("\0")
    zips = [p for p in sys.path if p.endswith(("pyspark.zip", "-src.zip"))]
    return {"daemon": daemon, "pyspark": pyspark.__file__, "zips_last": sys.path[-len(zips):] == zips}

out = run_indexed(spark, 1, probe)[0]
args = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments()
out["jvm_args"] = [str(a) for a in args]
print("PROBE " + json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("role", ["orchestrator", "general"])
def test_a_launched_local_session_applies_them(role, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if k not in (ENV_JIT, ENV_DAEMON, "SPARK_SUBMIT_OPTS", "SPARK_HOME", "SPARK_REMOTE")}
    env.update(PYSPARK_PYTHON=sys.executable, SEGMENTATION_JVM_ARCHIVE="off")
    proc = subprocess.run([sys.executable, "-c", _PROBE, role], env=env, capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("PROBE "))[6:])
    assert out["daemon"][1:3] == ["-m", DAEMON_MODULE]
    assert ".zip" not in out["pyspark"] and out["zips_last"]
    assert (C1_ONLY in out["jvm_args"]) == (role == "orchestrator")
