"""jvm_archive: when an archive is used, and (slow) a real one built by ``segment jvm-archive``
that a fresh driver JVM maps with -Xshare:on."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from segmentation import jvm_archive
from segmentation.errors import ConfigError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGMENTATION_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(jvm_archive.ENV_MODE, raising=False)
    monkeypatch.delenv("SPARK_SUBMIT_OPTS", raising=False)
    return tmp_path / "cache"


def _fake_archive(size: int, recorded: int) -> str:
    path = jvm_archive.archive_path(jvm_archive.archive_key())
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(b"\0" * size)
    with open(path + ".json", "w") as fh:
        json.dump({"size": recorded}, fh)
    return path


def test_no_archive_no_option(cache):
    assert jvm_archive.usable_archive() is None
    assert jvm_archive.launch_options({}) is None


def test_whole_archive_is_used_unless_off_or_the_user_chose(cache, monkeypatch):
    path = _fake_archive(64, 64)
    assert jvm_archive.usable_archive() == path
    assert jvm_archive.launch_options({}) == f"-XX:SharedArchiveFile={path}"
    assert jvm_archive.launch_options({"spark.driver.extraJavaOptions": "-Xshare:off"}) is None
    monkeypatch.setenv("SPARK_SUBMIT_OPTS", "-XX:SharedArchiveFile=/elsewhere.jsa")
    assert jvm_archive.launch_options({}) is None
    monkeypatch.delenv("SPARK_SUBMIT_OPTS")
    monkeypatch.setenv(jvm_archive.ENV_MODE, "off")
    assert jvm_archive.launch_options({}) is None
    monkeypatch.setenv(jvm_archive.ENV_MODE, "require")
    assert jvm_archive.launch_options({}) == f"-XX:SharedArchiveFile={path} -Xshare:on"


def test_archive_of_another_size_than_recorded_is_not_used(cache):
    """A truncated archive crashes the JVM that maps it: the size must match the record."""
    _fake_archive(60, 64)
    assert jvm_archive.usable_archive() is None
    assert jvm_archive.launch_options({}) is None


def test_bad_mode_and_require_without_archive_are_config_errors(cache, monkeypatch):
    monkeypatch.setenv(jvm_archive.ENV_MODE, "sometimes")
    with pytest.raises(ConfigError, match="SEGMENTATION_JVM_ARCHIVE='sometimes'"):
        jvm_archive.launch_options({})
    monkeypatch.setenv(jvm_archive.ENV_MODE, "require")
    with pytest.raises(ConfigError, match="segment jvm-archive"):
        jvm_archive.launch_options({})


def test_key_follows_the_jars(cache, tmp_path, monkeypatch):
    home = tmp_path / "spark"
    (home / "jars").mkdir(parents=True)
    (home / "jars" / "a.jar").write_bytes(b"x")
    monkeypatch.setenv("SPARK_HOME", str(home))
    k1 = jvm_archive.archive_key()
    assert k1 == jvm_archive.archive_key()
    (home / "jars" / "b.jar").write_bytes(b"y")
    assert jvm_archive.archive_key() != k1


_PROBE = """
import json, sys
from segmentation.spark_session import get_or_create_spark
spark = get_or_create_spark("probe", master="local[1]")
jvm = spark.sparkContext._jvm
args = list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
n = spark.range(100).selectExpr("sum(id) AS s").collect()[0]["s"]
print(json.dumps({"args": [str(a) for a in args], "sum": int(n)}))
"""


def _probe(env) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_built_archive_is_mapped_by_a_fresh_driver(tmp_path):
    env = dict(os.environ, SEGMENTATION_CACHE_DIR=str(tmp_path / "cache"), PYSPARK_PYTHON=sys.executable)
    for var in ("SPARK_SUBMIT_OPTS", jvm_archive.ENV_MODE, "PYSPARK_GATEWAY_PORT", "SPARK_REMOTE"):
        env.pop(var, None)
    cli = [sys.executable, "-m", "segmentation.cli", "jvm-archive"]
    assert subprocess.run(cli + ["--check"], env=env, capture_output=True).returncode == 2
    built = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    assert "wrote the JVM class archive" in built.stdout
    check = subprocess.run(cli + ["--check"], env=env, capture_output=True, text=True)
    assert check.returncode == 0
    path = check.stdout.strip().split(": ", 1)[1]
    assert not [f for f in os.listdir(os.path.dirname(path)) if ".tmp-" in f]

    # require = -Xshare:on: the JVM would refuse to start if it could not map the archive
    got = _probe(dict(env, SEGMENTATION_JVM_ARCHIVE="require"))
    assert f"-XX:SharedArchiveFile={path}" in got["args"] and "-Xshare:on" in got["args"]
    assert got["sum"] == 4950

    got = _probe(dict(env, SEGMENTATION_JVM_ARCHIVE="off"))
    assert not any("SharedArchiveFile" in a for a in got["args"])

    os.chmod(path, 0o644)                   # the JVM writes it read-only
    with open(path, "ab") as fh:            # no longer the recorded size: not used, no crash
        fh.write(b"\0")
    got = _probe(env)
    assert not any("SharedArchiveFile" in a for a in got["args"]) and got["sum"] == 4950
    assert subprocess.run(cli + ["--check"], env=env, capture_output=True).returncode == 2


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_what_nobody_can_use(cache, tmp_path):
    root = cache / "jvm"
    root.mkdir(parents=True)
    live_home = tmp_path / "spark-here"
    live_home.mkdir()

    def archive(name, spark_home):
        (root / f"spark-driver-{name}.jsa").write_bytes(b"\0" * 8)
        (root / f"spark-driver-{name}.jsa.json").write_text(
            json.dumps({"size": 8, "spark_home": str(spark_home), "java_home": str(live_home)}))

    archive("kept", live_home)
    archive("gone", tmp_path / "removed-venv" / "pyspark")
    (root / "spark-driver-x.jsa.json").write_text("{not json")          # unreadable: kept
    host = socket.gethostname()
    dead, live = f"{host}-{_dead_pid()}", f"{host}-{os.getpid()}"
    elsewhere = f"other-host.example-{_dead_pid()}"     # a shared cache: not ours to judge
    for tag in (dead, live, elsewhere):
        (root / f"spark-driver-kept.jsa.tmp-{tag}").write_bytes(b"\0")
    removed = jvm_archive.sweep_stale()
    assert sorted(os.path.basename(p) for p in removed) == sorted([
        "spark-driver-gone.jsa", "spark-driver-gone.jsa.json", f"spark-driver-kept.jsa.tmp-{dead}"])
    assert sorted(os.listdir(root)) == sorted([
        "spark-driver-kept.jsa", "spark-driver-kept.jsa.json", "spark-driver-x.jsa.json",
        f"spark-driver-kept.jsa.tmp-{live}", f"spark-driver-kept.jsa.tmp-{elsewhere}"])


@pytest.mark.slow
def test_a_build_that_times_out_leaves_no_jvm_and_no_file(cache, monkeypatch):
    """Past its timeout the dump child and the JVM it started are killed as a group before the
    cleanup: a JVM left alive would write its archive (hundreds of MB) after it."""
    import time

    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    t0 = time.monotonic()
    with pytest.raises(jvm_archive.ArchiveError, match="took more than 15 s"):
        jvm_archive.build(timeout=15)
    assert time.monotonic() - t0 < 90
    time.sleep(3)                               # a surviving JVM would be dumping by now
    root = cache / "jvm"
    assert not [f for f in os.listdir(root) if f.endswith(".jsa") or ".tmp-" in f]
    ps = subprocess.run(["ps", "-eww", "-o", "args="], capture_output=True, text=True).stdout
    assert str(root) not in ps
