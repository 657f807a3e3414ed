"""Process-wide switches read from the environment, each read in one place."""
from __future__ import annotations

import os


def interpreting() -> bool:
    """Whether Triton kernels run under ``TRITON_INTERPRET=1`` (on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def backend_default() -> str:
    """``FASTVAE_BACKEND``, the backend a call with ``backend=None`` asks for; "auto" when
    unset or empty (``FASTVAE_BACKEND= cmd`` is the shell's way to clear it for one
    command)."""
    return os.environ.get("FASTVAE_BACKEND") or "auto"


_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_said: set = set()


def unknown_switch(name: str):
    """Why switch ``name``'s value is neither on nor off (1/true/yes/on, 0/false/no/off,
    any case), or None: unset and empty are neither, the default (the shell's ``NAME= cmd``
    clears a switch for one command, as for FASTVAE_BACKEND)."""
    value = os.environ.get(name, "")
    if value.strip().lower() in ("", *_ON, *_OFF):
        return None
    return f"{name}={value!r} is neither 1/true/yes/on nor 0/false/no/off"


def switch(name: str, default: bool) -> bool:
    """Switch ``name``: ``default`` when unset or empty; a value neither on nor off is off,
    said once per process (a typo taken silently as on or off leaves the user guessing
    which; off is the path without the switch's feature, as FASTVAE_NATIVE reads it)."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    why = unknown_switch(name)
    if why is not None:
        if name not in _said:
            _said.add(name)
            from . import _warnings   # here: _warnings imports torch and the kernels
            _warnings.warn(f"fastvae: {why}; taken as off")
        return False
    return value in _ON


def direct_launch() -> bool:
    """``FASTVAE_DIRECT_LAUNCH``: Triton launches skip Triton's argument binding (on unless
    switched off)."""
    return switch("FASTVAE_DIRECT_LAUNCH", True)


def debug() -> bool:
    """``FASTVAE_DEBUG``: the commands show a failure's traceback instead of one line."""
    return switch("FASTVAE_DEBUG", False)
