"""Opening an MLflow store and its experiment when other runs may be doing the same at once.

A new local sqlite store (the default ``sqlite:///<cwd>/mlflow.db``, ``tracking/uri.py``) gets
its tables when a process first opens it: MLflow runs its alembic migrations from an empty file.
Two ``segment fit`` started together against the same new file (two model directories, one
default store) both migrate; one fails ("Online migration expected to match one row when
updating ... in 'alembic_version'; 0 found", or a sqlite "table ... already exists").
Likewise two runs that find the experiment missing both create it and one gets
``RESOURCE_ALREADY_EXISTS``.

``store_lock(uri)`` serialises the first opening of a sqlite store: an exclusive ``flock`` on
the directory that holds the database file (no lock file left behind; the kernel drops the
lock if the holder dies), held while the store is opened and the experiment looked up or
created. MLflow keeps one store object per URI and process, so the migration runs inside the
lock and nowhere else. Other stores (a tracking server, Databricks, a server-based database)
migrate on their side; for them the lock is a no-op and a lost creation race is resolved by
reading the experiment the other run created (``open_experiment``).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional


def sqlite_path(uri: str) -> Optional[str]:
    """The database file of a ``sqlite:`` URI (absolute), None for other URIs and in-memory ones."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    db = make_url(uri).database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return os.path.abspath(db)


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Exclusive lock for opening the store at ``uri`` (see the module docstring); waits."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    import fcntl

    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)                    # drops the lock


def open_experiment(uri: str, name: str, artifact_location: Optional[str] = None):
    """(``MlflowClient``, experiment id) for experiment ``name`` at ``uri``, the experiment
    created if missing; safe against runs doing the same at the same moment: the client (whose
    construction opens, and for a new sqlite file migrates, the store) and the experiment are
    made under ``store_lock``, and a lost creation race elsewhere reads the winner's."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return client, exp.experiment_id
        try:
            return client, client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as err:
            if getattr(err, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return client, exp.experiment_id
