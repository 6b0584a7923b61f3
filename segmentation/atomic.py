"""Publishing outputs atomically: write beside the target, then rename into place."""
from __future__ import annotations

import os
import shutil


def replace_dir(tmp_dir: str, final_dir: str) -> None:
    """Move the fully written ``tmp_dir`` to ``final_dir`` (same filesystem).

    An existing ``final_dir`` is renamed aside first and removed only after the new one is in
    place, so readers see either the old directory or the new one, never a half-written one.
    """
    final_dir = os.path.abspath(final_dir)
    if os.path.exists(final_dir):
        old = f"{final_dir}.old-{os.getpid()}"
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.makedirs(os.path.dirname(final_dir) or ".", exist_ok=True)
        os.replace(tmp_dir, final_dir)
