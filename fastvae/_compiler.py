"""What fastvae tells ``torch.compile`` about its own functions, said without importing
``torch._dynamo``: that import takes about as long as ``import torch`` itself, and a
process that never compiles (the CLI, a DDP worker, most scripts) should not pay it."""
from __future__ import annotations

import sys

import torch

# What ``torch.compiler.assume_constant_result`` sets on the function (torch 2.0 to 2.13);
# tests/test_compile.py checks that torch's decorator still sets exactly this.
_MARK = "_dynamo_marked_constant"


def constant_result(fn):
    """``torch.compiler.assume_constant_result(fn)``: under torch.compile, a call of ``fn``
    is run once while tracing and its result taken as a constant. Through torch's own
    decorator once dynamo is loaded anyway, else by setting the mark it would set."""
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    setattr(fn, _MARK, True)
    return fn
