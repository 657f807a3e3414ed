"""What fastvae tells ``torch.compile`` about its own functions, said without importing
``torch._dynamo``: that import takes about as long as ``import torch`` itself, and a
process that never compiles (the CLI, a DDP worker, most scripts) should not pay it; and
what ``torch.jit.script``, which cannot compile them, is told instead."""
from __future__ import annotations

import sys

import torch
from torch._guards import TracingContext as _TracingContext

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


@constant_result
def tracing_here() -> bool:
    """Whether this thread is the one tracing, asked where ``torch.compiler.is_compiling()``
    says True: write ``torch.compiler.is_compiling() and tracing_here()`` for "this code is
    being compiled".

    torch's own answer is a process-wide flag, held for the whole of a torch.compile session
    (and of a torch.export): while one thread compiles, every other thread's eager calls
    read True, and would take the compiled path's choices (no memo or routes, the custom
    ops' dispatch, no graph for a ``create_graph=True`` backward, no reference under
    ``torch.func``, DReG refused). Dynamo, tracing, folds the flag and this (a constant
    result, run once as it traces) to True; so does the Python a compile or an export runs
    as it traces (AOTAutograd over the custom ops' autograd, a non-strict export): each
    holds a ``TracingContext`` in the tracing thread. The flag is read first, and not from
    inside a function of fastvae's: eager code that a compiled function runs (a skipped
    frame, the rest after a graph break) would have dynamo compile that function's frame on
    its own, with both folded to True for good."""
    return _TracingContext.try_get() is not None


def script_refusal(name: str) -> TypeError:
    """The one-line error of ``torch.jit.script`` for ``name`` (an op, a loss module, a
    model): the ops are Python that TorchScript cannot compile, and its own error blamed
    whichever line it stopped at (a keyword-only argument, a property setter)."""
    return TypeError(f"{name} cannot be compiled by torch.jit.script (fastvae's ops are "
                     "Python); use torch.compile, or torch.jit.trace, which records the "
                     "reference math")


def not_scriptable(*fns) -> None:
    """``torch.jit.script`` of each of ``fns``, or of code that calls one, raises
    :func:`script_refusal`: it asks a function's ``__prepare_scriptable__`` before compiling
    it, a called one's too. An attribute set once: no call of the op pays for it."""
    for fn in fns:
        fn.__prepare_scriptable__ = _refuse(f"fastvae.{fn.__name__}")


def _refuse(name: str):
    def refuse():
        raise script_refusal(name)
    return refuse
