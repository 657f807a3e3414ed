"""Warnings that point at the user's line, not at fastvae's or torch's internals."""
from __future__ import annotations

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
    warnings.warn(message, category, stacklevel=_outside_frames())
