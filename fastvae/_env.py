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


def _off(name: str) -> bool:
    """Whether switch ``name`` is set to 0/false/no/off; unset and empty are neither (the
    shell's ``NAME= cmd`` clears a switch for one command, as for FASTVAE_BACKEND)."""
    return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


def direct_launch() -> bool:
    """``FASTVAE_DIRECT_LAUNCH``: Triton launches skip Triton's argument binding (on unless
    switched off)."""
    return not _off("FASTVAE_DIRECT_LAUNCH")


def debug() -> bool:
    """``FASTVAE_DEBUG``: the commands show a failure's traceback instead of one line.
    Off when unset, empty or 0/false/no/off, as FASTVAE_NATIVE reads them: someone who
    writes ``FASTVAE_DEBUG=0`` means off."""
    return os.environ.get("FASTVAE_DEBUG", "").strip() != "" and not _off("FASTVAE_DEBUG")
