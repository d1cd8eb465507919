"""Files only their owner may read, written so that a reader never sees half of one."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


def write_private_file(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically (a temp file renamed over it)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(temp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
