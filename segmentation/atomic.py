"""Publishing outputs atomically: write beside the target, then rename into place.

Replacing an existing directory (a retry or backfill of the same run date, ``output.overwrite``)
uses Linux's ``renameat2(RENAME_EXCHANGE)``: the new directory and the old one swap names in one
system call, so at every instant ``final_dir`` is either the complete old directory or the
complete new one, never missing; a crash right after leaves only the old copy under the staging
name (hidden, ``.``-prefixed) instead of no output at all. Where the exchange is not available
(not Linux, or a filesystem without it) the old directory is renamed aside first and the new one
renamed in (a window of microseconds in which ``final_dir`` does not exist).
"""
from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
    """Atomically swap the names ``a`` and ``b`` (both must exist); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"renameat2(RENAME_EXCHANGE) {a} <-> {b}: {os.strerror(err)}")


def replace_dir(tmp_dir: str, final_dir: str) -> None:
    """Move the fully written ``tmp_dir`` to ``final_dir`` (same filesystem).

    An existing ``final_dir`` is swapped with ``tmp_dir`` in one atomic exchange (see the module
    docstring) and the old contents, now under ``tmp_dir``, removed after; readers see either the
    old directory or the new one, never a half-written or missing one.
    """
    final_dir = os.path.abspath(final_dir)
    tmp_dir = os.path.abspath(tmp_dir)
    if os.path.exists(final_dir):
        if _exchange(tmp_dir, final_dir):
            shutil.rmtree(tmp_dir, ignore_errors=True)
            return
        old = os.path.join(os.path.dirname(final_dir), f".{os.path.basename(final_dir)}.old-{os.getpid()}")
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.makedirs(os.path.dirname(final_dir) or ".", exist_ok=True)
        os.replace(tmp_dir, final_dir)


def publish_dir(tmp_dir: str, final_dir: str, overwrite: bool) -> None:
    """Move a fully written output directory into place (rename; old copy removed after)."""
    if os.path.exists(final_dir) and not overwrite:
        raise FileExistsError(f"{os.path.abspath(final_dir)} exists and output.overwrite is false")
    from segmentation.ownership import OWNER_FILE

    try:
        os.unlink(os.path.join(tmp_dir, OWNER_FILE))    # staging_dir's owner record stays behind
    except FileNotFoundError:
        pass
    replace_dir(tmp_dir, final_dir)


def staging_dir(final_dir: str) -> str:
    """A fresh directory beside ``final_dir`` (same filesystem, so the final rename is atomic),
    with the permissions of a directory made normally (``mkdtemp`` makes it 0700, which the
    published model directory would keep: unreadable to anyone but the scheduler's user).
    It holds this process's owner record (``ownership.OWNER_FILE``, dropped by ``publish_dir``),
    so a later run removes it if this one is killed: every call first sweeps the staging
    directories of dead runs in the same parent (``ownership.sweep_staging_dirs``: never a live
    run's, nor one younger than the grace period), so each writer tidies where it writes."""
    from segmentation import ownership

    parent = os.path.dirname(os.path.abspath(final_dir)) or "."
    os.makedirs(parent, exist_ok=True)
    ownership.sweep_staging_dirs(parent, ownership.DEFAULT_GRACE_SECONDS)
    path = tempfile.mkdtemp(prefix=f".{os.path.basename(final_dir)}.tmp-", dir=parent)
    os.chmod(path, 0o777 & ~_umask())
    ownership.write_owner(path)
    return path


def _umask() -> int:
    """The process umask, read without setting it (``os.umask`` would change it for every
    thread for a moment); 0o022 where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022
