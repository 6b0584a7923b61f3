"""A real MLflow tracking server for tests: ``mlflow server`` from the venv on 127.0.0.1:<free
port>, its own sqlite store and artifact destination, started in its own session and stopped
(or killed) by its pid's process group, never by name."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server --host 127.0.0.1 --port P --backend-store-uri sqlite:///<root>/db
    --artifacts-destination <root>/art`` (artifacts proxied by the server)."""

    def __init__(self, root: Path, start_timeout: float = 180.0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db = self.root / "db"
        self.artifacts = self.root / "art"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def command(self) -> list[str]:
        mlflow_bin = Path(sys.prefix) / "bin" / "mlflow"
        launcher = [str(mlflow_bin)] if mlflow_bin.exists() else [sys.executable, "-m", "mlflow"]
        return launcher + ["server", "--host", "127.0.0.1", "--port", str(self.port),
                           "--backend-store-uri", f"sqlite:///{self.db}",
                           "--artifacts-destination", str(self.artifacts), "--workers", "1"]

    def start(self) -> "MlflowServer":
        env = dict(os.environ)
        env.pop("MLFLOW_TRACKING_URI", None)
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"    # no job runner: starts faster
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                         env=env, cwd=self.root, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server not ready after {self.start_timeout}s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """The server dies: ``sig`` to its process group (the mlflow launcher and its uvicorn)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.kill(signal.SIGTERM)
        if self.proc.poll() is None:
            self.kill(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)          # stragglers of the group

    def count_runs(self, status: str | None = None) -> int:
        """Runs in the server's own store (read straight from its sqlite file), optionally only
        those with ``status`` (a child run is FINISHED once everything of it is logged)."""
        if not self.db.exists():
            return 0
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            if status is None:
                return con.execute("SELECT count(*) FROM runs").fetchone()[0]
            return con.execute("SELECT count(*) FROM runs WHERE status = ?", (status,)).fetchone()[0]
        except sqlite3.OperationalError:
            return 0
        finally:
            con.close()

    def __enter__(self) -> "MlflowServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
