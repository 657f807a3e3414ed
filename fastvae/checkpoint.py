"""Checkpoints that survive crashes and load with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict of tensors, dicts, lists and primitives tagged
``format = "fastvae-checkpoint"``. It is written to a temporary file in the run
folder and moved into place with :func:`os.replace` (atomic on POSIX and Windows),
so a crash mid-write leaves the previous checkpoint intact. Only the file named
``checkpoint.pt`` counts as the run's checkpoint; a leftover temporary file never does.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import torch

FORMAT = "fastvae-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
_TMP_PREFIX = ".tmp-"


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt, or not a fastvae checkpoint."""


def _atomic_write(path: Path, write) -> None:
    """Write via ``write(file_object)`` to a temp file beside ``path``, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # The rename did not happen: the old file is untouched; drop the partial one.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_checkpoint(state: dict, path) -> Path:
    """Atomically save ``state`` (plus the format tag) to ``path``."""
    state = dict(state, format=FORMAT, version=VERSION)
    _atomic_write(Path(path), lambda f: torch.save(state, f))
    return Path(path)


def _json_safe(obj):
    """NaN and +-inf -> None: JSON has no tokens for them (json.dumps would write the
    non-standard ``NaN``/``Infinity``, which strict parsers reject)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(obj, path) -> Path:
    """Atomically write ``obj`` as pretty, strictly valid JSON (non-finite floats as null)."""
    data = (json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n").encode()
    _atomic_write(Path(path), lambda f: f.write(data))
    return Path(path)


def checkpoint_path(run) -> Path:
    """A run folder -> its ``checkpoint.pt``; a file path is returned as is."""
    run = Path(run)
    return run / CHECKPOINT_NAME if run.is_dir() or not run.suffix else run


def load_checkpoint(run, map_location="cpu") -> dict:
    """Load and check a checkpoint from a run folder or a file.

    Raises :class:`CheckpointError` with the path and the reason when it is missing,
    unreadable (truncated, corrupt) or not written by fastvae.
    """
    path = checkpoint_path(run)
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; train one with `fastvae train --out {path.parent}`"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and torch raise many types for a bad file
        raise CheckpointError(
            f"{path} is not a readable checkpoint (truncated, corrupt, or holds objects "
            f"weights_only loading refuses): {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastvae checkpoint (no '{FORMAT}' tag); "
                              "it was written by something else")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}, "
                              f"this fastvae reads version {VERSION}")
    for key in ("config", "model", "epoch"):
        if key not in state:
            raise CheckpointError(f"{path} lacks '{key}'; the file is incomplete")
    return state
