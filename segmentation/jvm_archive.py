"""A class-data-sharing (AppCDS) archive for the driver JVM this tool starts itself.

A fresh ``segment`` process spends seconds loading and verifying Spark's classes before its
first row is read: the session, then each kind of job the first time (Parquet, Arrow, a
shuffle). A dynamic CDS archive (JDK 13+; Spark 4 needs 17) holds those classes already
parsed and verified, and the JVM maps it instead. Measured here (2 cores, Java 17, PySpark
4.3), fresh processes, alternating: ``SparkSession`` 5.1-5.3 s -> 3.0-3.3 s, the first job
2.4-2.5 s -> 1.3-1.6 s, a whole ``segment fit`` at 1M rows x 50 17.7-18.2 s -> 14.0-15.2 s.
Nothing else changes: the same classes, the same code.

**Built on request** (``segment jvm-archive``, e.g. once per image or virtualenv): a child
process runs a small fit and assignment on a simulated campaign in a local session whose JVM
has ``-XX:ArchiveClassesAtExit``; the JVM writes the archive as it exits; the archive is then
checked by starting ``java -Xshare:on`` with it (a truncated archive crashes the JVM that maps
it, SIGBUS seen here, so it is checked before use and published only whole) and renamed into
place beside a JSON record of its size.

**Used** by :func:`segmentation.spark_session.get_or_create_spark` when it starts the JVM
itself (not under spark-submit, which started it already, not over Spark Connect, not when a
session exists): the option goes in ``SPARK_SUBMIT_OPTS`` for that launch only, beside, not
instead of, any ``spark.driver.extraJavaOptions``. An archive whose size differs from its
record is ignored; one built for another class path or JVM is ignored by the JVM itself
(``-Xshare:auto``, the default). ``SEGMENTATION_JVM_ARCHIVE``: ``auto`` (default: use one when
present), ``off``, or ``require`` (``-Xshare:on``: the JVM refuses to start if it cannot map
it; for checking a deployment). Executors on a cluster are not affected.

The archive is keyed by what decides whether the JVM can use it: the ``java`` binary Spark
will run (``JAVA_HOME`` or ``PATH``, path, size and time), Spark's jars (names and sizes) and
the environment variables that add to the class path. Kept under ``SEGMENTATION_CACHE_DIR``
(default ``$XDG_CACHE_HOME/segmentation`` or ``~/.cache/segmentation``), ``jvm/``: about
175 MB. Each build removes what nobody can use any more (:func:`sweep_stale`: archives of
a Spark or Java home that is gone, half-written files of dead builds); a build that times out
kills the JVM it started before cleaning up, so it leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

log = logging.getLogger(__name__)

ENV_MODE = "SEGMENTATION_JVM_ARCHIVE"
MODES = ("auto", "off", "require")
CLASSPATH_ENV = ("SPARK_DIST_CLASSPATH", "SPARK_CONF_DIR", "HADOOP_CONF_DIR", "YARN_CONF_DIR",
                 "SPARK_CLASSPATH")
_OWN_FLAGS = ("SharedArchiveFile", "ArchiveClassesAtExit", "-Xshare", "AutoCreateSharedArchive")


class ArchiveError(RuntimeError):
    """The archive could not be built (the message says which step failed)."""


def cache_dir() -> str:
    root = os.environ.get("SEGMENTATION_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "segmentation")
    return os.path.join(root, "jvm")


def mode() -> str:
    from segmentation.local_launch import env_mode

    return env_mode(ENV_MODE, MODES)


def java_binary() -> str | None:
    """The ``java`` that Spark's launcher (``bin/spark-class``) runs."""
    home = os.environ.get("JAVA_HOME")
    if home:
        return os.path.join(home, "bin", "java")
    return shutil.which("java")


def spark_home() -> str:
    from pyspark.find_spark_home import _find_spark_home

    return os.environ.get("SPARK_HOME") or _find_spark_home()


def archive_key() -> str | None:
    """A hash of the JVM binary, Spark's jars and the class-path variables; None without java
    or Spark (no archive then: the session starts as it would without this module)."""
    try:
        java = java_binary()
        if not java or not os.path.exists(java):
            return None
        return _key(java)
    except (OSError, SystemExit):      # pyspark's find_spark_home exits when it finds nothing
        return None


def _key(java: str) -> str:
    real = os.path.realpath(java)
    st = os.stat(real)
    h = hashlib.sha256()
    h.update(f"{real}|{st.st_size}|{st.st_mtime_ns}|{platform.machine()}\n".encode())
    home = os.path.realpath(spark_home())
    h.update(f"{home}\n".encode())
    jars = os.path.join(home, "jars")
    if os.path.isdir(jars):
        for name in sorted(os.listdir(jars)):
            try:
                h.update(f"{name}|{os.stat(os.path.join(jars, name)).st_size}\n".encode())
            except OSError:
                continue
    for var in CLASSPATH_ENV:
        h.update(f"{var}={os.environ.get(var, '')}\n".encode())
    return h.hexdigest()[:20]


def archive_path(key: str) -> str:
    return os.path.join(cache_dir(), f"spark-driver-{key}.jsa")


def usable_archive() -> str | None:
    """The path of a published archive for this JVM and Spark, whole (its size as recorded),
    or None."""
    key = archive_key()
    if key is None:
        return None
    path = archive_path(key)
    try:
        with open(path + ".json") as fh:
            record = json.load(fh)
        size = os.path.getsize(path)
    except (OSError, ValueError):
        return None
    if record.get("size") != size:
        log.warning("JVM class archive %s is %d bytes, its record says %s: not used (rebuild it "
                    "with `segment jvm-archive`)", path, size, record.get("size"))
        return None
    return path


def launch_options(conf: dict | None = None) -> str | None:
    """The JVM options to add to ``SPARK_SUBMIT_OPTS`` for a driver this process launches, or
    None (mode off, no usable archive, a path the launcher would split, or the caller's own
    ``spark.driver.extraJavaOptions`` / ``SPARK_SUBMIT_OPTS`` already choose CDS settings)."""
    m = mode()
    if m == "off":
        return None
    from segmentation.local_launch import user_java_options

    if any(flag in user_java_options(conf) for flag in _OWN_FLAGS):
        return None
    path = usable_archive()
    if path is None or any(ch.isspace() or ch in "\"'" for ch in path):
        if m == "require":
            from segmentation.errors import ConfigError

            raise ConfigError(f"{ENV_MODE}=require but there is no usable JVM class archive "
                               f"for this Java and Spark under {cache_dir()}: run `segment "
                               "jvm-archive`")
        return None
    opts = f"-XX:SharedArchiveFile={path}"
    return opts + " -Xshare:on" if m == "require" else opts


# ------------------------------------------------------------------------------ building

def _workload(work_dir: str, info_path: str) -> None:
    """Run in the child whose JVM dumps the archive: a small single fit and an assignment on a
    simulated campaign (the Parquet reader, pyarrow tasks, Arrow jobs, a shuffle, Parquet
    writes), then stop the JVM and wait for it, so that the archive is complete on return."""
    from pyspark import SparkContext

    from segmentation.config import parse_config
    from segmentation.data.simulate import simulate_campaign
    from segmentation.spark_session import get_or_create_spark
    from segmentation.workflow import demo_config, run_assign, run_fit

    data_dir = os.path.join(work_dir, "campaign")
    simulate_campaign(data_dir, n_users=3000, seed=0, overwrite=True)
    raw = demo_config(data_dir, os.path.join(work_dir, "model"), cv=False)
    raw["mlflow"] = {"enabled": False}
    spark = get_or_create_spark("segmentation-jvm-archive", master="local[2]",
                                conf={"spark.sql.shuffle.partitions": "4"})
    jvm = spark.sparkContext._jvm
    with open(info_path, "w") as fh:
        json.dump({"java_home": str(jvm.System.getProperty("java.home")),
                   "class_path": str(jvm.System.getProperty("java.class.path")),
                   "java_version": str(jvm.System.getProperty("java.version"))}, fh)
    run_fit(parse_config(raw))
    run_assign(os.path.join(work_dir, "model"), os.path.join(data_dir, "exposures"),
               os.path.join(work_dir, "assignments"))
    proc = getattr(SparkContext._gateway, "proc", None)
    spark.stop()
    if proc is not None:            # EOF on its stdin makes the gateway JVM exit (and dump)
        proc.stdin.close()
        proc.wait(timeout=600)


def build(timeout: float = 900.0) -> dict:
    """Build and publish the archive for this JVM and Spark; return its record."""
    key = archive_key()
    if key is None:
        raise ArchiveError("no java found (JAVA_HOME or PATH): cannot build a JVM class archive")
    final = archive_path(key)
    try:
        os.makedirs(os.path.dirname(final), exist_ok=True)
    except OSError as exc:
        raise ArchiveError(f"cannot create the archive directory {os.path.dirname(final)} ({exc}); "
                           "set SEGMENTATION_CACHE_DIR to a writable directory") from None
    tmp = f"{final}.tmp-{_writer_tag()}"
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="segmentation-jvm-archive-") as work:
        info_path = os.path.join(work, "jvm.json")
        env = dict(os.environ)
        env[ENV_MODE] = "off"
        env["SPARK_SUBMIT_OPTS"] = (env.get("SPARK_SUBMIT_OPTS", "")
                                    + f" -XX:ArchiveClassesAtExit={tmp}").strip()
        env.pop("PYSPARK_GATEWAY_PORT", None)
        env.pop("SPARK_REMOTE", None)
        try:
            proc = _run_dump([sys.executable, "-m", "segmentation.jvm_archive", "_dump", work,
                              info_path], env, timeout)
            if proc.returncode != 0 or not os.path.exists(tmp) or not os.path.exists(info_path):
                tail = "\n".join(proc.stdout.splitlines()[-15:])
                raise ArchiveError(f"the JVM that runs the sample fit did not write an archive "
                                   f"(exit {proc.returncode}):\n{tail}")
            with open(info_path) as fh:
                info = json.load(fh)
            java = os.path.join(info["java_home"], "bin", "java")
            check = subprocess.run([java, "-Xshare:on", f"-XX:SharedArchiveFile={tmp}",
                                    "-cp", info["class_path"], "-version"],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   timeout=120)
            if check.returncode != 0:
                raise ArchiveError(f"the archive {tmp} does not load (java -Xshare:on exit "
                                   f"{check.returncode}): {check.stdout.strip()[-500:]}")
            record = {"size": os.path.getsize(tmp), "key": key,
                      "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "seconds": round(time.time() - t0, 1), "java_version": info["java_version"],
                      "java_home": info["java_home"], "spark_home": os.path.realpath(spark_home())}
            if os.path.exists(final + ".json"):
                os.remove(final + ".json")      # no record: a reader skips the archive meanwhile
            os.replace(tmp, final)              # a JVM mapping the old one keeps its inode
            rec_tmp = f"{final}.json.tmp-{_writer_tag()}"
            with open(rec_tmp, "w") as fh:
                json.dump(record, fh, indent=1)
            os.replace(rec_tmp, final + ".json")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    record["path"] = final
    record["swept"] = sweep_stale()
    return record


def _run_dump(cmd: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run the dump child in its own process group; past ``timeout``, SIGKILL the whole group
    (the child and the JVM it launched) and wait until it is gone, so that no JVM is left to
    write a partial archive after the caller has cleaned up (the JVM exits, and dumps, when its
    Python parent dies)."""
    import signal

    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    try:
        out, _ = child.communicate(timeout=timeout)
        return subprocess.CompletedProcess(cmd, child.returncode, out, None)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        child.poll()
        time.sleep(0.1)
    child.communicate()
    raise ArchiveError(f"the sample fit that builds the archive took more than {timeout:.0f} s")


def sweep_stale() -> list[str]:
    """Remove from :func:`cache_dir` what nobody can use any more; return the removed paths.

    - a published archive whose record names a Spark or Java home that no longer exists (a
      removed virtualenv or JDK: every launch of that install is gone with it);
    - a half-written archive or record (``*.tmp-<host>-<pid>``) whose writer is not running
      on this host (one written from another host sharing the cache directory is kept).

    Archives of other installs that still exist are kept: they may be in use.
    """
    import contextlib

    root = cache_dir()
    removed: list[str] = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(root, name)
        doomed: list[str] = []
        if ".tmp-" in name:
            if _writer_dead(name.rsplit(".tmp-", 1)[1]):
                doomed = [path]
        elif name.endswith(".jsa.json") and _install_gone(path):
            doomed = [path, path[:-len(".json")]]       # record first: readers skip it then
        for victim in doomed:
            with contextlib.suppress(OSError):
                os.remove(victim)
                removed.append(victim)
    if removed:
        log.info("removed %d stale JVM class archive file(s) under %s", len(removed), root)
    return removed


def _install_gone(record_path: str) -> bool:
    """True when the record names a Spark or Java home that no longer exists."""
    try:
        with open(record_path) as fh:
            rec = json.load(fh)
    except (OSError, ValueError):
        return False
    homes = [rec.get("spark_home"), rec.get("java_home")]
    return any(isinstance(h, str) and h and not os.path.isdir(h) for h in homes)


def _writer_tag() -> str:
    """``<host>-<pid>`` of this process: the suffix of the files a build writes before renaming."""
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"


def _writer_dead(tag: str) -> bool:
    """The build process named by a ``<host>-<pid>`` tag is gone: only a process of this host can
    be judged (``ownership.owner_state``); a tag that is not of this form is left alone."""
    from segmentation.ownership import owner_state

    host, _, pid = tag.rpartition("-")
    if not pid.isdigit() or not host:
        return False
    return owner_state({"host": host, "pid": int(pid)}) == "dead"


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "_dump":
    logging.basicConfig(level=logging.WARNING)
    _workload(sys.argv[2], sys.argv[3])
