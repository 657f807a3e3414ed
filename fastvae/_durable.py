"""Durable file replacement shared by checkpoints and the C kernel cache."""
from __future__ import annotations

import os
from pathlib import Path


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


def fsync_parents(created) -> None:
    """Make new folders durable: a folder's name is an entry in its parent, which an fsync
    of the files inside it does not reach (fsync(2)); without this a power loss can drop a
    new run folder, and the checkpoint already fsynced inside it with it."""
    for folder in created:
        fsync_dir(Path(folder).parent)
