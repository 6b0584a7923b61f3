"""Real Spark engines for tests: a standalone cluster whose workers look like separate hosts,
a Spark Connect server, a wheel build and a ``spark-submit`` runner.

Everything binds to 127.0.0.x only, ports are picked at run time, and every process this module
starts is stopped by its pid (and by the process group it was started in), never by name.

Design notes
------------
* Workers of :class:`StandaloneCluster` each run in their own mount namespace
  (``unshare --mount --propagation private``) with a fresh tmpfs over ``/dev/shm``, ``/tmp`` and
  the project checkout; the virtualenv (and, if it is hidden too, the base interpreter) is bind-
  mounted back at its own path. An executor therefore sees the venv's python and pyspark exactly
  as a cluster image would ship them, and none of the driver's files: a driver-side path read in a
  task raises ``FileNotFoundError``, as on a real cluster. Only :meth:`StandaloneCluster.shared_dir`
  (under ``/var/tmp``) is visible to both sides; it stands in for HDFS/S3.
* Each worker binds to its own loopback address (127.0.0.2, 127.0.0.3, ...) so Spark does not
  treat its executors as host-local to the driver (host-local shuffle reads would hit the private
  disks and fail).
* This needs root (or CAP_SYS_ADMIN) and util-linux ``unshare``; without them
  :class:`HarnessUnavailable` is raised, which tests turn into ``pytest.skip``.
"""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

EXECUTOR_CLASS = "org.apache.spark.executor.CoarseGrainedExecutorBackend"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
CONNECT_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"

# JVM flags for short-lived test JVMs on a small box: C1 only and the serial GC halve the CPU a
# Spark JVM burns while starting (measured: master/worker 8.5 -> 4.4 CPU-s each, Connect server
# 25 -> 14 CPU-s to first query). Pure speed; drop them (quick_jvm=False) when benchmarking.
QUICK_JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"

# Environment variables that would turn a classic driver/server into something else.
_POLLUTING_ENV = (
    "SPARK_REMOTE",
    "SPARK_CONNECT_MODE_ENABLED",  # set process-wide by pyspark's classic builder .remote()
    "SPARK_LOCAL_REMOTE",
    "SPARK_API_MODE",
    "PYSPARK_SUBMIT_ARGS",
    "MASTER",
)


class HarnessUnavailable(RuntimeError):
    """The engine cannot be started on this machine (no root, no unshare, ...). Skip, don't fail."""


class HarnessError(RuntimeError):
    """The engine was started but did not become ready (message carries the log tail)."""


def start_or_skip(make, what: str):
    """``make()`` then ``.start()`` it, for a pytest fixture: skip the tests when the engine
    cannot run here (``HarnessUnavailable``), fail them when it did not become ready."""
    import pytest

    try:
        service = make()
        service.start()
    except HarnessUnavailable as err:
        pytest.skip(str(err))
    except HarnessError as err:
        pytest.fail(f"{what} did not start: {err}")
    return service


# --------------------------------------------------------------------------------------------
# Paths and environment
# --------------------------------------------------------------------------------------------

def repo_root() -> Path:
    """The project checkout: the nearest parent of this file holding pyproject.toml."""
    here = Path(__file__).resolve().parent
    for cand in (here, *here.parents):
        if (cand / "pyproject.toml").is_file():
            return cand
    raise HarnessError(f"no pyproject.toml above {here}")


def venv_prefix() -> Path:
    """The running interpreter's environment (sys.prefix): the venv workers must see."""
    return Path(sys.prefix)


def venv_python() -> str:
    """Path of the venv's python (not resolved: the venv's site-packages depend on it)."""
    cand = venv_prefix() / "bin" / "python"
    return str(cand) if cand.exists() else sys.executable


def spark_home() -> str:
    """SPARK_HOME of the installed pyspark (its package directory)."""
    import pyspark

    return os.path.dirname(os.path.abspath(pyspark.__file__))


def spark_bin(name: str) -> str:
    """A Spark launcher script (spark-submit, spark-class): the venv's, else SPARK_HOME/bin."""
    cand = venv_prefix() / "bin" / name
    if cand.exists():
        return str(cand)
    return os.path.join(spark_home(), "bin", name)


def spark_env(extra: Mapping[str, str] | None = None, *, local_ip: str | None = "127.0.0.1") -> dict:
    """os.environ for a Spark JVM or driver: SPARK_HOME, PYSPARK_(DRIVER_)PYTHON = venv python,
    venv bin first on PATH, SPARK_LOCAL_IP (loopback), and Connect-mode switches removed."""
    env = dict(os.environ)
    for key in _POLLUTING_ENV:
        env.pop(key, None)
    py = venv_python()
    env["SPARK_HOME"] = spark_home()
    env["PYSPARK_PYTHON"] = py
    env["PYSPARK_DRIVER_PYTHON"] = py
    env["VIRTUAL_ENV"] = str(venv_prefix())
    env["PATH"] = os.pathsep.join([str(venv_prefix() / "bin"), env.get("PATH", "")])
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    if local_ip:
        env["SPARK_LOCAL_IP"] = local_ip
    if extra:
        env.update(extra)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (small race: bind it soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tail(path: str | os.PathLike, lines: int = 40) -> str:
    """Last ``lines`` lines of a text file ('' if missing)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# Processes (by pid, never by name)
# --------------------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, starttime) of a pid from /proc, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode("utf-8", "replace")
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[19])


def pid_alive(pid: int) -> bool:
    """True if the pid exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def descendants(pids: Iterable[int]) -> list[int]:
    """All live descendants of the given pids (not the pids themselves)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[0] != "Z":
                children.setdefault(st[1], []).append(int(entry))
    out: list[int] = []
    stack = list(pids)
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _identity(pid: int) -> tuple[int, int] | None:
    st = _stat(pid)
    return None if st is None else (pid, st[2])


def _kill_identities(idents: Iterable[tuple[int, int]], sig: int) -> None:
    for pid, start in idents:
        st = _stat(pid)
        if st is not None and st[2] == start and st[0] != "Z":  # same process, not a reused pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)


def _wait_gone(idents: Iterable[tuple[int, int]], timeout: float,
               procs: Sequence[subprocess.Popen] = ()) -> bool:
    idents = list(idents)
    deadline = time.monotonic() + timeout
    while True:
        for p in procs:
            p.poll()  # reap our own children so they do not linger as zombies
        alive = [i for i in idents if (st := _stat(i[0])) is not None and st[2] == i[1] and st[0] != "Z"]
        if not alive:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def terminate_tree(procs: Sequence[subprocess.Popen], *, grace: float = 10.0,
                   extra_pids: Iterable[int] = ()) -> None:
    """Stop processes we started (each in its own session) plus all their descendants:
    SIGTERM to each pid and its process group, wait ``grace`` s, then SIGKILL what is left.
    Descendants are snapshotted first, so children that re-group (pyspark's daemon calls
    setpgid) or get re-parented when their parent dies are still killed."""
    roots = [p.pid for p in procs if p.poll() is None] + list(extra_pids)
    idents = [i for i in (_identity(pid) for pid in [*roots, *descendants(roots)]) if i]
    pgids = [p.pid for p in procs]  # started with start_new_session=True: pgid == pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in pgids:
            if pgid != os.getpgrp():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, sig)
        _kill_identities(idents, sig)
        if _wait_gone(idents, grace if sig == signal.SIGTERM else 10.0, procs):
            break
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)


def run_captured(cmd: Sequence[str], *, env: Mapping[str, str], timeout: float,
                 cwd: str | os.PathLike | None = None,
                 on_timeout=None) -> subprocess.CompletedProcess:
    """``cmd`` in its own session with text output captured (stdin closed). Past ``timeout``,
    ``on_timeout(proc)`` (if given) runs while the command is still alive, then the whole
    process tree is killed and ``TimeoutExpired`` (with the output so far) raised; any other
    exception (Ctrl-C) kills the tree too."""
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=dict(env),
                            cwd=str(cwd) if cwd else None, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        if on_timeout is not None:
            on_timeout(proc)
        terminate_tree([proc], grace=5.0)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(list(cmd), timeout, output=out, stderr=err) from None
    except BaseException:
        terminate_tree([proc], grace=5.0)
        raise
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


def run_cli(cmd: Sequence[str], *, env: Mapping[str, str], timeout: float,
            server_pid: int | None = None, server_log: str | os.PathLike | None = None,
            cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """:func:`run_captured` for a ``segment`` command that, when it outlives ``timeout``, tells
    a hang from slowness before killing it: it asks the command for its Python stacks
    (``segment`` dumps every thread's stack on SIGUSR1), takes a thread dump of the server JVM
    ``server_pid`` (``jstack``; the threads running tasks or Connect requests go into the
    error, the whole dump into a file beside ``server_log``) and lists the server's process
    tree, then raises :class:`HarnessError` with all of that and the tails of the command's
    stderr and the server log."""
    report: list[str] = []

    def diagnose(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(3.0)
        if server_pid is not None and pid_alive(server_pid):
            report.append(_server_state(server_pid, server_log))

    try:
        return run_captured(cmd, env=env, timeout=timeout, cwd=cwd, on_timeout=diagnose)
    except subprocess.TimeoutExpired as exc:
        parts = [f"{shlex.join(map(str, cmd))} still running after {timeout:.0f}s (killed)", *report,
                 "--- command stderr (tail; thread stacks from SIGUSR1 at the end)\n"
                 + (exc.stderr or "")[-12000:]]
        if server_log is not None:
            parts.append("--- server log (tail)\n" + tail(server_log, 60))
        raise HarnessError("\n".join(parts)) from None


_BUSY_THREADS = ("Executor task launch", "SparkConnectExecuteThread", "dag-scheduler",
                 "spark-connect-execution", "main")


def _server_state(pid: int, log: str | os.PathLike | None) -> str:
    """The server JVM's busy threads (jstack) and its process tree, for a hang report."""
    lines = []
    tree = subprocess.run(["ps", "-o", "pid=,ppid=,stat=,etime=,args=", "-p",
                           ",".join(str(p) for p in [pid, *descendants([pid])])],
                          capture_output=True, text=True).stdout
    lines.append("--- server process tree\n" + "\n".join(ln[:300] for ln in tree.splitlines()))
    jstack = shutil.which("jstack")
    if jstack is None:
        return "\n".join(lines + ["(no jstack on PATH)"])
    dump = subprocess.run([jstack, str(pid)], capture_output=True, text=True, timeout=60).stdout
    if log is not None:
        path = Path(log).with_suffix(f".jstack-{int(time.time())}.txt")
        path.write_text(dump)
        lines.append(f"--- server thread dump: {path}")
    busy = [b for b in dump.split("\n\n") if b.startswith('"') and any(n in b.split("\n")[0]
                                                                          for n in _BUSY_THREADS)]
    lines.append("\n\n".join("\n".join(b.splitlines()[:40]) for b in busy)[:20000])
    return "\n".join(lines)


def executor_pids(app_id: str | None = None) -> list[int]:
    """Pids of CoarseGrainedExecutorBackend JVMs on this machine (from ``ps -eo pid,args``),
    optionally only those of application ``app_id``."""
    out = subprocess.run(["ps", "-eww", "-o", "pid=,args="], capture_output=True, text=True,
                         check=True).stdout
    pids = []
    for line in out.splitlines():
        pid_s, _, args = line.strip().partition(" ")
        if EXECUTOR_CLASS not in args:
            continue
        if app_id is not None and app_id not in args.split():
            continue
        if pid_s.isdigit() and int(pid_s) != os.getpid():
            pids.append(int(pid_s))
    return sorted(pids)


def executor_host(pid: int) -> str | None:
    """The ``--hostname`` an executor JVM was started with (its worker's address), or None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().decode("utf-8", "replace").split("\0")
    except OSError:
        return None
    if EXECUTOR_CLASS in args and "--hostname" in args:
        i = args.index("--hostname")
        return args[i + 1] if i + 1 < len(args) else None
    return None


def kill_executor(pid: int, sig: int = signal.SIGKILL) -> None:
    """Kill one executor JVM by pid (SIGKILL by default: like a lost host). Refuses a pid that
    is not an executor."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError as exc:
        raise ProcessLookupError(f"no process {pid}") from exc
    if EXECUTOR_CLASS not in cmd:
        raise ValueError(f"pid {pid} is not a Spark executor: {cmd[:200]}")
    os.kill(pid, sig)


def _wait_port(host: str, port: int, proc: subprocess.Popen, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            if s.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.25)
    return False


def _default_log_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# --------------------------------------------------------------------------------------------
# Standalone cluster
# --------------------------------------------------------------------------------------------

def _is_under(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def check_unshare() -> None:
    """Raise HarnessUnavailable unless a private mount namespace with a tmpfs can be made."""
    if shutil.which("unshare") is None:
        raise HarnessUnavailable("util-linux `unshare` not found")
    try:
        res = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             "mount -t tmpfs harness-probe /mnt 2>/dev/null || mount -t tmpfs harness-probe /tmp"],
            capture_output=True, text=True, timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HarnessUnavailable(f"unshare failed: {exc}") from exc
    if res.returncode != 0:
        raise HarnessUnavailable(
            f"cannot create a private mount namespace with a tmpfs (needs root/CAP_SYS_ADMIN): "
            f"rc={res.returncode} {res.stderr.strip()[:300]}")


class StandaloneCluster:
    """A Spark standalone Master on 127.0.0.1 plus ``n_workers`` Workers on 127.0.0.2, .3, ...,
    each worker in its own mount namespace (private /dev/shm, /tmp and checkout; venv visible).

    Use as a context manager, or call :meth:`start` / :meth:`stop`. Logs (master.log,
    worker-N.log) go to ``log_dir`` (a fresh temp dir by default). Executor logs live in each
    worker's private /tmp and vanish with it; read them while running through the worker web UI.
    """

    def __init__(self, n_workers: int = 2, cores: int = 1, memory: str = "3g", *,
                 log_dir: str | os.PathLike | None = None, start_timeout: float = 60.0,
                 shared_root: str | os.PathLike = "/var/tmp", quick_jvm: bool = True) -> None:
        self.n_workers = n_workers
        self.quick_jvm = quick_jvm
        self.cores = cores
        self.memory = memory
        self.start_timeout = start_timeout
        self.log_dir = Path(log_dir) if log_dir else None
        self._shared_root = Path(shared_root)
        self.master_host = "127.0.0.1"
        self.worker_hosts = [f"127.0.0.{i + 2}" for i in range(n_workers)]
        self.master_port: int | None = None
        self.webui_port: int | None = None
        self.startup_seconds: float | None = None
        self._master: subprocess.Popen | None = None
        self._workers: list[subprocess.Popen] = []
        self._base: Path | None = None
        self._logs: list[Path] = []
        self._stopped = False
        self._worker_urls: list[str] = []

    # -- public properties ---------------------------------------------------------------
    @property
    def master_url(self) -> str:
        return f"spark://{self.master_host}:{self.master_port}"

    @property
    def master_web_url(self) -> str:
        return f"http://{self.master_host}:{self.webui_port}"

    @property
    def master_pid(self) -> int | None:
        return self._master.pid if self._master else None

    @property
    def worker_pids(self) -> list[int]:
        return [p.pid for p in self._workers]

    def shared_dir(self) -> Path:
        """A directory both the driver and all workers see (stand-in for HDFS/S3); removed at stop."""
        if self._base is None:
            raise HarnessError("cluster not started")
        return self._base / "shared"

    def driver_conf(self, executor_memory: str = "1g", executor_cores: int = 1,
                    max_cores: int | None = None, quick_jvm: bool = True,
                    **extra: str) -> dict[str, str]:
        """Spark conf a classic driver needs to use this cluster: driver bound to 127.0.0.1,
        executors' python = the venv's (``spark.pyspark.python`` is what picks the python on
        executors), UI off, and by default one executor of ``executor_cores`` per worker
        (``spark.cores.max``; the master spreads executors over workers). ``quick_jvm`` adds
        QUICK_JVM_OPTS to the driver's and executors' extraJavaOptions. ``extra`` is a dict of
        further conf (pass ``**{"spark.x.y": "v"}``)."""
        py = venv_python()
        conf = {
            "spark.master": self.master_url,
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.executor.memory": executor_memory,
            "spark.executor.cores": str(executor_cores),
            "spark.cores.max": str(max_cores or executor_cores * self.n_workers),
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.pyspark.python": py,
            "spark.executorEnv.PYSPARK_PYTHON": py,
            "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
            "spark.executorEnv.OMP_NUM_THREADS": "1",
        }
        if quick_jvm:
            conf["spark.driver.extraJavaOptions"] = QUICK_JVM_OPTS
            conf["spark.executor.extraJavaOptions"] = QUICK_JVM_OPTS
        conf.update(extra)
        return conf

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> "StandaloneCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "StandaloneCluster":
        check_unshare()
        t0 = time.monotonic()
        if self.log_dir is None:
            self.log_dir = _default_log_dir("spark-cluster-logs-")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._shared_root.mkdir(parents=True, exist_ok=True)
        self._base = Path(tempfile.mkdtemp(prefix="spark-harness-", dir=self._shared_root))
        (self._base / "shared").mkdir()
        os.chmod(self._base, 0o755)
        try:
            self._start_master()
            for i, host in enumerate(self.worker_hosts, start=1):
                self._start_worker(i, host)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _start_master(self) -> None:
        self.master_port = free_port(self.master_host)
        self.webui_port = free_port(self.master_host)
        log = self.log_dir / "master.log"
        self._logs.append(log)
        cmd = [spark_bin("spark-class"), MASTER_CLASS, "--host", self.master_host,
               "--port", str(self.master_port), "--webui-port", str(self.webui_port)]
        with open(log, "ab") as fh:
            self._master = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self._master_env(), cwd=str(self.log_dir),
                start_new_session=True)

    def _daemon_env(self, host: str, extra: Mapping[str, str] | None = None) -> dict:
        env = spark_env(extra, local_ip=host)
        if self.quick_jvm:  # read by spark-class for Master/Worker only, not for executors
            env["SPARK_DAEMON_JAVA_OPTS"] = f"{env.get('SPARK_DAEMON_JAVA_OPTS', '')} {QUICK_JVM_OPTS}".strip()
        return env

    def _master_env(self) -> dict:
        env = self._daemon_env(self.master_host)
        # The REST submission server would take the fixed port 6066; nothing here needs it.
        env["SPARK_MASTER_OPTS"] = (env.get("SPARK_MASTER_OPTS", "") + " -Dspark.master.rest.enabled=false").strip()
        return env

    def _hidden_roots(self) -> list[Path]:
        return [Path("/dev/shm"), Path("/tmp"), repo_root()]

    def _keep_paths(self) -> list[Path]:
        """Paths hidden by the tmpfs mounts that workers still need (venv, base interpreter)."""
        hidden = self._hidden_roots()
        keep: list[Path] = []
        for p in (venv_prefix(), Path(os.path.realpath(sys.base_prefix))):
            if any(_is_under(p, h) for h in hidden) and not any(_is_under(p, k) for k in keep):
                keep.append(p)
        if any(_is_under(self._base, h) for h in hidden):  # side mounts + shared dir must stay visible
            raise HarnessUnavailable(f"shared root {self._base} is under a path hidden from workers")
        return keep

    def worker_script(self, index: int, host: str, web_port: int, rpc_port: int) -> str:
        """The bash script run inside ``unshare`` for one worker (exposed for debugging)."""
        q = shlex.quote
        keep = self._keep_paths()
        sides = [self._base / f"side-{index}-{k}" for k in range(len(keep))]
        for s in sides:
            s.mkdir(exist_ok=True)
        lines = ["set -eu"]
        for src, side in zip(keep, sides):
            lines.append(f"mount --bind {q(str(src))} {q(str(side))}")
        lines += [
            "mount -t tmpfs -o mode=1777 tmpfs /dev/shm",
            "mount -t tmpfs -o mode=1777 tmpfs /tmp",
            f"mkdir -p {q(str(repo_root()))}",
            f"mount -t tmpfs -o mode=755 tmpfs {q(str(repo_root()))}",
        ]
        for src, side in zip(keep, sides):
            lines += [f"mkdir -p {q(str(src))}",
                      f"mount --bind {q(str(side))} {q(str(src))}",
                      f"umount {q(str(side))}"]
        lines += [
            "mkdir -p /tmp/spark-worker /tmp/spark-local",
            "export SPARK_WORKER_DIR=/tmp/spark-worker SPARK_LOCAL_DIRS=/tmp/spark-local",
            "cd /tmp",
            "exec " + " ".join(q(a) for a in [
                spark_bin("spark-class"), WORKER_CLASS, "--host", host, "--port", str(rpc_port),
                "--webui-port", str(web_port), "--cores", str(self.cores), "--memory", self.memory,
                "--work-dir", "/tmp/spark-worker", self.master_url]),
        ]
        return "\n".join(lines)

    def _start_worker(self, index: int, host: str) -> None:
        rpc_port = free_port(host)
        script = self.worker_script(index, host, free_port(host), rpc_port)
        (self.log_dir / f"worker-{index}.sh").write_text(script + "\n")
        log = self.log_dir / f"worker-{index}.log"
        self._logs.append(log)
        env = self._daemon_env(host, {"PYSPARK_PYTHON": venv_python()})
        with open(log, "ab") as fh:
            proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd="/", start_new_session=True)
        self._workers.append(proc)
        self._worker_urls.append(f"spark://Worker@{host}:{rpc_port}")

    def state(self) -> dict:
        """The master's JSON status (http://127.0.0.1:W/json/)."""
        with urllib.request.urlopen(self.master_web_url + "/json/", timeout=5) as resp:
            return json.loads(resp.read().decode())

    def alive_workers(self) -> list[dict]:
        return [w for w in self.state().get("workers", []) if w.get("state") == "ALIVE"]

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(f"--- {p.name} ---\n{tail(p, lines)}" for p in self._logs)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last = "no answer"
        while time.monotonic() < deadline:
            dead = [(name, p.returncode) for name, p in
                    [("master", self._master), *[(f"worker-{i + 1}", w) for i, w in enumerate(self._workers)]]
                    if p.poll() is not None]
            if dead:
                raise HarnessError(f"cluster process exited during start: {dead}\n{self.log_tail()}")
            try:
                alive = {w.get("host") for w in self.alive_workers()}
                if set(self.worker_hosts) <= alive:
                    return
                last = f"alive workers: {sorted(alive)}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.5)
        raise HarnessError(
            f"standalone cluster not ready after {self.start_timeout:.0f}s "
            f"({last}; wanted {self.worker_hosts})\n{self.log_tail()}")

    def executor_pids(self, app_id: str | None = None) -> list[int]:
        """Executor JVM pids of this cluster's workers (optionally of one application)."""
        mine = set(descendants(self.worker_pids))
        return [p for p in executor_pids(app_id) if p in mine]

    def kill_executor(self, pid: int, sig: int = signal.SIGKILL) -> None:
        kill_executor(pid, sig)

    def all_pids(self) -> list[int]:
        """Every live process of the cluster: master, workers, executors, python workers."""
        roots = [p.pid for p in [self._master, *self._workers] if p is not None and pid_alive(p.pid)]
        return roots + descendants(roots)

    def stop(self) -> None:
        """Stop the master first (only it orders new executors: a worker stopped before it can
        still be told to launch one for a driver that lost its executors, and that JVM would
        outlive the snapshot of the worker's tree), then the workers and their executors, then
        SIGKILL any executor still naming one of our workers; remove the shared directory.
        Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        if self._master is not None:
            terminate_tree([self._master], grace=10.0)
        if self._workers:
            terminate_tree(self._workers, grace=10.0)
        strays = self._stray_executors()
        if strays:
            idents = [i for i in (_identity(p) for p in strays) if i]
            _kill_identities(idents, signal.SIGKILL)
            _wait_gone(idents, 10.0)
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)

    def _stray_executors(self) -> list[int]:
        """Executor JVMs started by one of this cluster's workers (``--worker-url``), whoever
        their parent is now."""
        out = []
        for pid in executor_pids():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    args = fh.read().decode("utf-8", "replace").split("\0")
            except OSError:
                continue
            if any(url in args for url in self._worker_urls):
                out.append(pid)
        return out


# --------------------------------------------------------------------------------------------
# Spark Connect server
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def connect_session(url: str) -> Iterator:
    """A Spark Connect client session for ``url``, stopped on exit.

    Uses ``pyspark.sql.connect.session.SparkSession`` directly: pyspark's classic builder
    ``SparkSession.builder.remote(url)`` sets ``SPARK_CONNECT_MODE_ENABLED=1`` in os.environ for
    the rest of the process, which makes any later classic ``getOrCreate()`` in that process
    (e.g. a session-scoped local ``spark`` fixture) fail. The variable is restored on exit too.
    """
    from pyspark.sql.connect.session import SparkSession as RemoteSparkSession

    saved = {k: os.environ.get(k) for k in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE")}
    session = RemoteSparkSession.builder.remote(url).create()
    try:
        yield session
    finally:
        try:
            session.stop()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


class ConnectServer:
    """``spark-submit --class SparkConnectServer`` on 127.0.0.1:<free port>.

    ``master`` may be ``local[N]`` or a :class:`StandaloneCluster` ``master_url`` (then pass
    ``conf=cluster.driver_conf()`` minus what you don't want). Stop every client session
    before :meth:`stop` (a client on a dead server retries for a long time).
    """

    def __init__(self, master: str = "local[2]", conf: Mapping[str, str] | None = None, *,
                 log_dir: str | os.PathLike | None = None, start_timeout: float = 90.0,
                 env: Mapping[str, str] | None = None, quick_jvm: bool = True) -> None:
        self.master = master
        self.quick_jvm = quick_jvm
        self.conf = dict(conf or {})
        self.log_dir = Path(log_dir) if log_dir else None
        self.start_timeout = start_timeout
        self.extra_env = dict(env or {})
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"sc://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def __enter__(self) -> "ConnectServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def command(self) -> list[str]:
        conf = {
            "spark.ui.enabled": "false",
            "spark.driver.host": self.host,
            "spark.driver.bindAddress": self.host,
            "spark.pyspark.python": venv_python(),
            **({"spark.driver.extraJavaOptions": QUICK_JVM_OPTS} if self.quick_jvm else {}),
            **self.conf,
            "spark.connect.grpc.binding.address": self.host,
            "spark.connect.grpc.binding.port": str(self.port),
        }
        cmd = [spark_bin("spark-submit"), "--class", CONNECT_CLASS, "--master", self.master]
        for k, v in conf.items():
            cmd += ["--conf", f"{k}={v}"]
        return cmd + ["spark-internal"]

    def session(self):
        """Context manager: a client session on this server, stopped on exit."""
        return connect_session(self.url)

    def start(self) -> "ConnectServer":
        t0 = time.monotonic()
        if self.log_dir is None:
            self.log_dir = _default_log_dir("spark-connect-logs-")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(self.host)
        self.log_path = self.log_dir / f"connect-server-{self.port}.log"
        with open(self.log_path, "ab") as fh:
            self._proc = subprocess.Popen(
                self.command(), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=spark_env(self.extra_env), cwd=str(self.log_dir), start_new_session=True)
        try:
            self._wait_ready(time.monotonic() + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        if not _wait_port(self.host, self.port, self._proc, deadline):
            state = (f"exited rc={self._proc.returncode}" if self._proc.poll() is not None
                     else f"port {self.port} not open after {self.start_timeout:.0f}s")
            raise HarnessError(f"Spark Connect server {state}\n{tail(self.log_path)}")
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                with connect_session(self.url) as spark:
                    if spark.range(3).count() == 3:
                        return
            except Exception as exc:  # server still warming up
                last = exc
            time.sleep(0.5)
        raise HarnessError(f"Spark Connect server at {self.url} not usable "
                           f"(rc={self._proc.poll()}, last error: {last!r})\n{tail(self.log_path)}")

    def stop(self) -> None:
        """Stop the server JVM and its python workers (by pid and process group). Idempotent."""
        if self._proc is not None:
            terminate_tree([self._proc], grace=15.0)


# --------------------------------------------------------------------------------------------
# Wheel and spark-submit
# --------------------------------------------------------------------------------------------

_WHEEL_IGNORE = shutil.ignore_patterns(
    ".venv", "venv", ".git", "build", "dist", "*.egg-info", "__pycache__", "*.pyc",
    ".pytest_cache", "mlruns", "mlartifacts", "mlflow.db", "spark-warehouse", "metastore_db",
    "tests", "notebooks", "out", "runs")


def build_wheel(out_dir: str | os.PathLike, *, timeout: float = 600.0) -> Path:
    """Build the project's wheel into ``out_dir`` and return its path.

    Builds from a copy of the checkout (so setuptools' build/ and *.egg-info never land in the
    working tree), first with ``--no-build-isolation`` (fast, offline; needs setuptools and wheel
    in the venv), falling back to an isolated build (downloads the build requirements)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    errors = []
    with tempfile.TemporaryDirectory(prefix="wheel-src-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(repo_root(), src, ignore=_WHEEL_IGNORE, symlinks=True)
        for isolation in (["--no-build-isolation"], []):
            before = set(out.glob("*.whl"))
            cmd = [venv_python(), "-m", "pip", "wheel", str(src), "--no-deps", "-q",
                   "--disable-pip-version-check", *isolation, "-w", str(out)]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                 env=spark_env(local_ip=None))
            wheels = sorted(set(out.glob("*.whl")) - before) or sorted(out.glob("*.whl"))
            if res.returncode == 0 and wheels:
                return max(wheels, key=lambda p: p.stat().st_mtime)
            errors.append(f"$ {' '.join(cmd)}\nrc={res.returncode}\n{res.stderr[-2000:]}")
    raise HarnessError("wheel build failed:\n" + "\n\n".join(errors))


def py_files_zip(wheel: str | os.PathLike) -> Path:
    """A ``.zip`` copy of a pure-Python wheel, next to it, for ``--py-files`` / ``addPyFile``.

    PySpark 4.3 puts only ``.zip``, ``.egg`` and ``.jar`` entries of ``spark.submit.pyFiles`` on
    the python path (``SparkContext.PACKAGE_EXTENSIONS``): a ``.whl`` is shipped to the executors
    but silently never importable. A wheel is a zip, so the same bytes named ``.zip`` work."""
    wheel = Path(wheel)
    target = wheel.with_suffix(".zip")
    shutil.copyfile(wheel, target)
    return target


def wheel_contains(wheel: str | os.PathLike, member: str) -> bool:
    with zipfile.ZipFile(wheel) as zf:
        return member in zf.namelist()


def spark_submit(args: Sequence[str], env: Mapping[str, str] | None = None, *,
                 timeout: float = 300.0, cwd: str | os.PathLike | None = None,
                 check: bool = False) -> subprocess.CompletedProcess:
    """Run ``.venv/bin/spark-submit <args>`` (SPARK_HOME, PYSPARK_PYTHON and PATH set from the
    venv; SPARK_LOCAL_IP=127.0.0.1 unless ``env`` says otherwise). Captures text output. On
    timeout the whole process group is killed and TimeoutExpired is raised."""
    result = run_captured([spark_bin("spark-submit"), *args], env=spark_env(env), timeout=timeout,
                          cwd=cwd)
    if check:
        result.check_returncode()
    return result
