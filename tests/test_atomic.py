"""segmentation.atomic.replace_dir: a retry or backfill replaces a directory in one step."""
import os
import threading

import pytest

from segmentation import atomic


def _make(path, text):
    os.makedirs(path)
    with open(os.path.join(path, "part"), "w") as fh:
        fh.write(text)


def _read(path):
    with open(os.path.join(path, "part")) as fh:
        return fh.read()


def test_new_directory_is_moved_into_place(tmp_path):
    _make(tmp_path / ".stage", "new")
    atomic.replace_dir(str(tmp_path / ".stage"), str(tmp_path / "out" / "ds=2024-01-01"))
    assert _read(tmp_path / "out" / "ds=2024-01-01") == "new"
    assert os.listdir(tmp_path) == ["out"]


def test_existing_directory_is_exchanged_and_never_missing(tmp_path):
    """Replace one directory 300 times while a reader polls it: the reader always finds a
    complete version (the exchange leaves no instant without ``final``), and only ``final`` is
    left in the parent afterwards."""
    final = str(tmp_path / "ds=2024-01-01")
    _make(final, "v0")
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                seen.append(_read(final))
            except FileNotFoundError:
                seen.append(None)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(1, 301):
            stage = str(tmp_path / f".ds=2024-01-01.tmp-{i}")
            _make(stage, f"v{i}")
            atomic.replace_dir(stage, final)
    finally:
        stop.set()
        t.join()
    assert _read(final) == "v300"
    assert None not in seen and len(seen) > 0
    assert sorted(os.listdir(tmp_path)) == ["ds=2024-01-01"]


def test_fallback_without_exchange_renames_aside(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    final = str(tmp_path / "model")
    _make(final, "old")
    _make(tmp_path / ".stage", "new")
    atomic.replace_dir(str(tmp_path / ".stage"), final)
    assert _read(final) == "new"
    assert os.listdir(tmp_path) == ["model"]


@pytest.mark.skipif(not os.path.exists("/proc/self"), reason="renameat2 is Linux only")
def test_exchange_is_available_here(tmp_path):
    """On Linux (CI) the atomic exchange, not the fallback, is what runs."""
    _make(tmp_path / "a", "a")
    _make(tmp_path / "b", "b")
    assert atomic._exchange(str(tmp_path / "a"), str(tmp_path / "b"))
    assert _read(tmp_path / "a") == "b" and _read(tmp_path / "b") == "a"


def test_staging_dir_has_normal_permissions(tmp_path):
    """The model directory is published by renaming its staging directory: it must not keep
    mkdtemp's 0700 (readers other than the scheduler's user could not open model.json)."""
    from segmentation.atomic import staging_dir

    umask = os.umask(0o022)
    try:
        stage = staging_dir(str(tmp_path / "models" / "ds=2024-01-01"))
    finally:
        os.umask(umask)
    assert os.path.basename(stage).startswith(".ds=2024-01-01.tmp-")
    assert os.stat(stage).st_mode & 0o777 == 0o755
