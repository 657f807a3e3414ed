"""Triton's interpreter, without its per-call re-patch of triton.language.

Under ``TRITON_INTERPRET=1`` a kernel launch patches ``triton.language`` (every builtin
wrapped for the interpreter, through ``inspect.getmembers`` of each module) and restores
it when the grid is done. Each call of a ``@triton.jit`` helper inside the kernel then
patches the same modules again, for every program of the grid, and never restores that
patch: the kernel's own restore undoes the language as a whole. Half the interpreter
suite's time went there (the mixture kernel: 99 of 198 s).

:func:`install` makes a helper's call skip the re-patch while a launch has the modules
of the helper's globals patched; anything else (a helper that sees a module the kernel
did not patch, a Triton whose interpreter is laid out otherwise) goes through Triton's
own function. Only the test session's interpreter children use it.
"""
from __future__ import annotations

import inspect
import sys


class _Nothing:
    def restore(self) -> None:
        pass


def install() -> bool:
    """Wrap ``triton.runtime.interpreter._patch_lang``; False where it is not there."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return False
    original = getattr(interpreter, "_patch_lang", None)
    launch = getattr(interpreter, "GridExecutor", None)
    helper = getattr(interpreter, "InterpretedFunction", None)
    if original is None or launch is None or helper is None or \
            getattr(original, "_fastvae_once", False):
        return False
    try:
        if list(inspect.signature(original).parameters) != ["fn"]:
            return False
    except (TypeError, ValueError):
        return False
    under_way = []  # the modules each launch under way has patched, innermost last

    seen = {}

    def langs(fn):  # the language modules fn's globals hold (fixed once imported)
        key = id(fn.__globals__)
        if key not in seen:
            seen[key] = frozenset(id(v) for v in fn.__globals__.values()
                                  if inspect.ismodule(v) and v in (tl, tl.core))
        return seen[key]

    def patch_lang(fn):
        caller = sys._getframe(1).f_locals.get("self")
        if isinstance(caller, helper) and under_way and langs(fn) <= under_way[-1]:
            return _Nothing()   # a helper inside a launch: its language is patched
        scope = original(fn)
        if isinstance(caller, launch) and hasattr(scope, "restore"):
            mine = langs(fn)
            under_way.append(mine)
            restore = scope.restore

            def restore_and_pop():
                try:
                    restore()
                finally:
                    under_way.remove(mine)
            scope.restore = restore_and_pop
        return scope

    patch_lang._fastvae_once = True
    interpreter._patch_lang = patch_lang
    return True
