"""Proves tests/engines/harness.py against real engines: a standalone cluster whose workers cannot
see the driver's files, executor loss during a job, Spark Connect (incl. barrier mapInArrow), the
project wheel, and spark-submit.

Why the cluster drivers run in a subprocess
-------------------------------------------
A process holds at most one SparkContext, and its py4j JVM keeps the conf it was born with.
The project's tests/conftest.py offers a session-scoped local ``spark`` fixture that may already
be alive in this pytest process (or be created later by another test), so an in-process classic
session on the cluster would either collide with it or silently reuse the local one. A driver
subprocess (venv python, env from ``harness.spark_env``) is isolated, is killed as a process
group if anything hangs, and behaves like a real ``spark-submit`` client-mode driver. The test
process itself only observes and kills executors by pid. One driver (module fixture ``driver``,
serving JSON requests on stdin) is shared by the cluster tests to pay its start-up once; they
run in file order: isolation probe, executor kill, spark-submit next to it (workers have 2 cores
so both apps fit), and last the cluster stop while that driver still holds executors.

The Connect client does run in this process, through ``harness.connect_session`` (which does
not leave ``SPARK_CONNECT_MODE_ENABLED`` set in os.environ; pyspark's classic
``SparkSession.builder.remote()`` would, and that breaks every later classic session here).
Functions sent to Spark are defined inside the tests so cloudpickle ships them by value: a
function defined at module level here would be pickled by reference to ``test_harness``, a module
no executor can import.
"""
from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from pathlib import Path

import pytest

import harness

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

DRIVER_SCRIPT = r"""
import json, sys, time, traceback
from pyspark.sql import SparkSession

cfg = json.loads(sys.argv[1])
builder = SparkSession.builder.appName(cfg["app"])
for k, v in cfg["conf"].items():
    builder = builder.config(k, v)
spark = builder.getOrCreate()
sc = spark.sparkContext


def executor_hosts():
    # block managers as host:port, the driver's included
    return sc._jsc.sc().getExecutorMemoryStatus().keySet().mkString(",").split(",")


def probe(req):
    paths, shared_out = req["paths"], req["shared_out"]

    def task(_):
        import importlib.util, json, os, sys
        from pyspark import BarrierTaskContext
        ctx = BarrierTaskContext.get()
        ctx.barrier()  # both tasks run at once: one per executor (1 core each)
        part = ctx.partitionId()
        seen = {k: os.path.exists(p) for k, p in paths.items()}
        content = open(paths["shared"]).read() if seen["shared"] else None
        with open(os.path.join(shared_out, "from-executor-%d.txt" % part), "w") as fh:
            fh.write(os.environ.get("SPARK_LOCAL_IP", "?"))
        try:
            spec = importlib.util.find_spec("segmentation")
            seg = None if spec is None else spec.origin
        except Exception as exc:
            seg = "error: %r" % (exc,)
        yield json.dumps({"partition": part, "local_ip": os.environ.get("SPARK_LOCAL_IP"),
                          "exists": seen, "shared_content": content, "segmentation": seg,
                          "python": sys.executable})

    rows = sc.parallelize(range(2), 2).barrier().mapPartitions(task).collect()
    return {"rows": [json.loads(r) for r in rows], "executor_hosts": executor_hosts()}


def slow(req):
    n, pause, markers = req["n_tasks"], req["sleep"], req["marker_dir"]

    def square(x):
        import os, time
        # "<executor address>-<x>" appears in the shared dir when the task starts
        open(os.path.join(markers, "%s-%d" % (os.environ.get("SPARK_LOCAL_IP"), x)), "w").close()
        time.sleep(pause)
        return x * x

    print("RUNNING", flush=True)
    return {"total": sc.parallelize(range(n), n).map(square).sum()}


try:
    deadline = time.time() + 90
    while len(executor_hosts()) < cfg["executors"] + 1:  # + the driver
        if time.time() > deadline:
            raise SystemExit("executors did not register within 90 s")
        time.sleep(0.2)
    print("READY " + sc.applicationId, flush=True)
    for line in sys.stdin:  # one JSON request per line
        req = json.loads(line)
        if req["cmd"] == "quit":
            break
        try:
            out = {"probe": probe, "slow": slow}[req["cmd"]](req)
            print("RESULT " + json.dumps(out), flush=True)
        except Exception:
            print("RESULT " + json.dumps({"error": traceback.format_exc()}), flush=True)
finally:
    spark.stop()
"""


class Driver:
    """A classic PySpark driver in a subprocess (own process group) serving JSON requests on
    stdin; its stdout lines are read by a thread."""

    def __init__(self, tmp: Path, cfg: dict):
        script = tmp / "driver.py"
        script.write_text(DRIVER_SCRIPT)
        self.stderr_path = tmp / "driver.stderr"
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [harness.venv_python(), str(script), json.dumps(cfg)],
            stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.PIPE, text=True,
            env=harness.spark_env({"PYTHONUNBUFFERED": "1"}), cwd=str(tmp),
            start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.app_id: str | None = None

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"driver printed no {prefix!r} in {timeout}s\n{self.log()}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"driver exited (rc={self.proc.wait()}) before {prefix!r}\n{self.log()}")
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def send(self, cmd: str, **req):
        self.proc.stdin.write(json.dumps({"cmd": cmd, **req}) + "\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict:
        out = json.loads(self.expect("RESULT", timeout))
        assert "error" not in out, out["error"] + "\n" + self.log()
        return out

    def log(self) -> str:
        return "driver stderr tail:\n" + harness.tail(self.stderr_path, 40)

    def close(self):
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.send("quit")
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=30)
        harness.terminate_tree([self.proc], grace=5.0)
        self._err.close()


def wait_until(pred, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two workers with 2 cores each: the long-lived test driver holds one core per worker, so
    a spark-submit app can run next to it."""
    try:
        c = harness.StandaloneCluster(n_workers=2, cores=2, memory="3g", start_timeout=90,
                                      log_dir=tmp_path_factory.mktemp("cluster-logs"))
        c.start()
    except harness.HarnessUnavailable as exc:
        pytest.skip(f"standalone cluster unavailable: {exc}")
    print(f"\n[harness] cluster up in {c.startup_seconds:.1f}s at {c.master_url}")
    yield c
    c.stop()


@pytest.fixture(scope="module")
def driver(cluster, tmp_path_factory):
    """One classic driver app on the cluster (1 executor x 1 core per worker), shared by the
    cluster tests to pay the driver start-up once."""
    t0 = time.monotonic()
    cfg = {"app": "harness-tests", "executors": 2, "conf": cluster.driver_conf(executor_memory="1g")}
    d = Driver(tmp_path_factory.mktemp("driver"), cfg)
    try:
        d.app_id = d.expect("READY", 120)
    except BaseException:
        d.close()
        raise
    print(f"\n[harness] driver + 2 executors ready in {time.monotonic() - t0:.1f}s ({d.app_id})")
    yield d
    d.close()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    t0 = time.monotonic()
    path = harness.build_wheel(tmp_path_factory.mktemp("wheel"))
    print(f"\n[harness] wheel built in {time.monotonic() - t0:.1f}s: {path.name}")
    return path


# --------------------------------------------------------------------------------------------
# standalone cluster
# --------------------------------------------------------------------------------------------

def test_cluster_executors_cannot_see_driver_files(cluster, driver, tmp_path):
    tag = uuid.uuid4().hex[:12]
    shm_file = Path("/dev/shm") / f"harness-probe-{tag}"
    repo_file = harness.repo_root() / "tests" / "engines" / f".harness-probe-{tag}"
    tmp_file = tmp_path / f"harness-probe-{tag}"
    shared_file = cluster.shared_dir() / f"probe-{tag}.txt"
    shared_out = cluster.shared_dir() / f"out-{tag}"
    shared_out.mkdir()
    try:
        for f in (shm_file, repo_file, tmp_file):
            f.write_text("driver only")
        shared_file.write_text("from the driver")
        driver.send("probe", shared_out=str(shared_out),
                    paths={"shm": str(shm_file), "repo": str(repo_file), "tmp": str(tmp_file),
                           "shared": str(shared_file)})
        result = driver.result(90)
    finally:
        for f in (shm_file, repo_file, tmp_file):
            f.unlink(missing_ok=True)

    rows = sorted(result["rows"], key=lambda r: r["partition"])
    assert len(rows) == 2
    for row in rows:
        assert row["exists"] == {"shm": False, "repo": False, "tmp": False, "shared": True}, row
        assert row["shared_content"] == "from the driver"
        assert row["python"] == harness.venv_python()
    # two different "hosts": where the tasks ran, and where Spark sees the block managers
    assert {row["local_ip"] for row in rows} == {"127.0.0.2", "127.0.0.3"}, rows
    hosts = sorted(h.rsplit(":", 1)[0] for h in result["executor_hosts"])
    assert hosts == ["127.0.0.1", "127.0.0.2", "127.0.0.3"], result["executor_hosts"]  # driver + 2
    # executors write to the shared dir and the driver side reads it
    written = sorted(p.read_text() for p in shared_out.glob("from-executor-*.txt"))
    assert written == ["127.0.0.2", "127.0.0.3"]
    print(f"\n[harness] executor-side find_spec('segmentation'), nothing shipped: "
          f"{sorted({str(r['segmentation']) for r in rows})}")


def test_cluster_job_survives_executor_kill(cluster, driver):
    pids = cluster.executor_pids(driver.app_id)
    assert len(pids) == 2, (driver.app_id, pids, harness.executor_pids(), cluster.state())
    assert harness.executor_pids(driver.app_id) == pids
    victim = pids[0]
    victim_host = harness.executor_host(victim)
    assert victim_host in cluster.worker_hosts
    markers = cluster.shared_dir() / f"markers-{uuid.uuid4().hex[:8]}"
    markers.mkdir()
    n, pause = 8, 1.0
    t0 = time.monotonic()
    driver.send("slow", n_tasks=n, sleep=pause, marker_dir=str(markers))
    driver.expect("RUNNING", 30)
    # kill while a task is running on it: the task's start marker names the victim's address
    assert wait_until(lambda: list(markers.glob(f"{victim_host}-*")), 60, interval=0.05), \
        "no task started on the victim"
    cluster.kill_executor(victim)
    assert wait_until(lambda: not harness.pid_alive(victim), 10)
    result = driver.result(120)
    print(f"\n[harness] job with a killed executor finished in {time.monotonic() - t0:.1f}s")
    assert result["total"] == sum(x * x for x in range(n))
    log = harness.tail(driver.stderr_path, 400)
    assert "Lost executor" in log and "Lost task" in log, driver.log()
    # the master replaces the lost executor
    assert wait_until(lambda: len(cluster.executor_pids(driver.app_id)) == 2, 60), cluster.state()
    assert victim not in cluster.executor_pids(driver.app_id)


def test_cluster_ships_wheel_with_spark_submit(cluster, driver, wheel, tmp_path):
    """The route users take on a cluster: ``spark-submit --py-files``, with the wheel as .zip."""
    script = tmp_path / "where.py"
    script.write_text(
        "import json\n"
        "from pyspark.sql import SparkSession\n"
        "spark = SparkSession.builder.getOrCreate()\n"
        "def where(_):\n"
        "    import importlib.util\n"
        "    spec = importlib.util.find_spec('segmentation')\n"
        "    yield None if spec is None else spec.origin\n"
        "print('ORIGINS ' + json.dumps(spark.sparkContext.parallelize(range(2), 2)"
        ".mapPartitions(where).collect()))\n"
        "spark.stop()\n")
    conf = cluster.driver_conf(executor_memory="1g")
    archive = harness.py_files_zip(wheel)
    args = ["--master", conf.pop("spark.master"), "--py-files", str(archive)]
    for k, v in conf.items():
        args += ["--conf", f"{k}={v}"]
    res = harness.spark_submit([*args, str(script)], timeout=180, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(l for l in res.stdout.splitlines() if l.startswith("ORIGINS "))
    origins = json.loads(line[len("ORIGINS "):])
    assert len(origins) == 2 and all(o and archive.name in o for o in origins), origins


def test_cluster_stop_leaves_no_processes(cluster, driver):
    """Stop the cluster while the driver's app still holds executors: nothing may survive."""
    shared = cluster.shared_dir()
    executors = cluster.executor_pids(driver.app_id)
    assert len(executors) == 2
    before = cluster.all_pids()
    assert {cluster.master_pid, *cluster.worker_pids, *executors} <= set(before)
    cluster.stop()
    assert not [p for p in before if harness.pid_alive(p)]
    assert not cluster.all_pids()
    assert not harness.executor_pids(driver.app_id)
    assert not shared.exists()


# --------------------------------------------------------------------------------------------
# Spark Connect
# --------------------------------------------------------------------------------------------

def test_connect_server_sql_and_barrier_map_in_arrow(tmp_path):
    with harness.ConnectServer(master="local[2]", log_dir=tmp_path) as server:
        print(f"\n[harness] connect server up in {server.startup_seconds:.1f}s at {server.url}")
        pid = server.pid
        tree = [pid, *harness.descendants([pid])]
        with server.session() as spark:
            assert spark.range(10).selectExpr("sum(id) AS s").collect()[0]["s"] == 45

            def gather(batches):
                import pyarrow as pa
                from pyspark import BarrierTaskContext

                ctx = BarrierTaskContext.get()
                rows = sum(b.num_rows for b in batches)
                seen = ctx.allGather(f"{ctx.partitionId()}:{rows}")
                yield pa.RecordBatch.from_pydict(
                    {"part": [ctx.partitionId()], "seen": [",".join(sorted(seen))]})

            out = (spark.range(0, 6, 1, 2)
                   .mapInArrow(gather, "part long, seen string", barrier=True)
                   .collect())
        assert sorted(r["part"] for r in out) == [0, 1]
        assert {r["seen"] for r in out} == {"0:3,1:3"}
        assert "SPARK_CONNECT_MODE_ENABLED" not in os.environ
        state = harness._server_state(pid, server.log_path)     # what a hang report shows
        assert f"{pid} " in state and '"main"' in state and "server thread dump: " in state
        tree += harness.descendants([pid])
    assert not harness.pid_alive(pid)
    assert not [p for p in tree if harness.pid_alive(p)]


# --------------------------------------------------------------------------------------------
# wheel and spark-submit
# --------------------------------------------------------------------------------------------

def test_build_wheel_contains_package(wheel):
    assert wheel.suffix == ".whl" and wheel.exists()
    with zipfile.ZipFile(wheel) as zf:
        assert "segmentation/__init__.py" in zf.namelist()


def test_spark_submit_local_script(tmp_path):
    script = tmp_path / "tiny.py"
    script.write_text(
        "from pyspark.sql import SparkSession\n"
        "spark = SparkSession.builder.appName('harness-tiny').getOrCreate()\n"
        "assert spark.range(5).count() == 5\n"
        "print('TINY-OK')\n"
        "spark.stop()\n")
    res = harness.spark_submit(["--master", "local[1]", "--conf", "spark.ui.enabled=false",
                                "--driver-java-options", harness.QUICK_JVM_OPTS,
                                str(script)], timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "TINY-OK" in res.stdout


def test_run_cli_returns_like_subprocess_run_and_reports_a_hang_with_its_stacks(tmp_path):
    ok = harness.run_cli([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"],
                         env=os.environ, timeout=60)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "out\n", "err\n")
    stuck = ("import faulthandler, signal, time\n"
             "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
             "def stuck_here():\n    time.sleep(600)\n"
             "stuck_here()\n")
    log = tmp_path / "server.log"
    log.write_text("last server line\n")
    t0 = time.monotonic()
    with pytest.raises(harness.HarnessError) as err:
        harness.run_cli([sys.executable, "-c", stuck], env=os.environ, timeout=5, server_log=log)
    msg = str(err.value)
    assert "still running after 5s (killed)" in msg
    assert "stuck_here" in msg and "last server line" in msg
    assert time.monotonic() - t0 < 60
