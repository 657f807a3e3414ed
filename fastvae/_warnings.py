"""Warnings that point at the user's line, not at fastvae's or torch's internals; under
the ``fastvae`` command, which runs no line of the user's, one line of its own."""
from __future__ import annotations

import contextlib
import os
import sys
import warnings

import torch

from . import kernels

_INTERNAL = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                  for m in (sys.modules[__package__], kernels, torch))


def _outside_frames() -> int:
    """The ``stacklevel`` of the first caller outside fastvae and torch (a call through
    ``nn.Module.__call__`` or autograd passes torch's frames too); the outermost frame
    when every frame is internal."""
    frame, level = sys._getframe(2), 2
    while (frame.f_back is not None
           and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL)):
        frame, level = frame.f_back, level + 1
    return level


def warn(message: str, category: type[Warning] = RuntimeWarning) -> None:
    said = category(message)
    said.fastvae_own = True   # what as_command words as the command's
    warnings.warn(said, stacklevel=_outside_frames())


@contextlib.contextmanager
def as_command(prog: str):
    """While the command ``prog`` (``fastvae eval``) runs, fastvae's own warnings read
    ``prog: warning: ...``, one line as its errors are: the caller :func:`warn` finds
    there is the launcher, ``<frozen runpy>`` (python -m) or the console script's
    ``sys.exit(console())``, no line the user wrote. Only the text changes: filters,
    ``-W error`` and recorders such as pytest.warns meet the warning as before."""
    before = warnings.formatwarning

    def one_line(message, category, filename, lineno, line=None):
        if not getattr(message, "fastvae_own", False):
            return before(message, category, filename, lineno, line)
        return f"{prog}: warning: {str(message).removeprefix('fastvae: ')}\n"

    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = before
