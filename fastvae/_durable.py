"""Durable file replacement shared by checkpoints and the C kernel cache."""
from __future__ import annotations

import os


def fsync_dir(folder) -> None:
    """Make a rename inside ``folder`` durable (POSIX); not possible or needed on Windows."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
