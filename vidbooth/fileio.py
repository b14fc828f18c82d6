"""Publishing a finished temporary file under its final name, with the permissions a new file would get."""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(temporary: str | Path, path: str | Path) -> None:
    """Rename `temporary` over `path` atomically. `tempfile.mkstemp` creates files readable by their owner only
    (0600); the published file gets the usual 0666 minus the umask, like any file the user creates."""
    os.chmod(temporary, 0o666 & ~current_umask())
    os.replace(temporary, path)
