"""Triton's interpreter, without its per-call re-patch of triton.language.

Under ``TRITON_INTERPRET=1`` a kernel launch patches the language modules its globals
hold (every builtin wrapped for the interpreter, through ``inspect.getmembers`` of each
module) and restores them when the grid is done. Each call of a ``@triton.jit`` helper
inside the kernel then patches its own modules again, in every program of the grid, and
never restores that patch (nor does the launch, where the helper's modules are ones the
launch did not patch: ``tl.sum``'s ``triton.language.core``). Half the interpreter
suite's time went there (the mixture kernel: 99 of 198 s).

:func:`install` makes a helper's call skip the re-patch while the launch under way has
every module of the helper's globals patched already: by the launch itself, or by an
earlier helper call of the same launch (left patched, as Triton leaves it). Anything
else goes through Triton's own function: a helper whose globals hold no language module
(Triton's error), a launch's own patch, a Triton whose interpreter is laid out
otherwise. Only the test session's interpreter children use it.

:func:`install` also memoizes ``interpreter._get_np_dtype``, which builds a table of
nineteen Triton dtypes (each hashed by a Python method) at every call to look one up:
about a tenth of the interpreter children's time (py-spy, Triton 3.9).
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
    under_way = []  # per launch under way (innermost last): the modules patched in it
    seen = {}

    def langs(fn):
        # the language modules fn's globals hold; looked up again when the globals grow
        # (Triton's rewrite of a function copies names into them)
        g = fn.__globals__
        key = (id(g), len(g))
        if key not in seen:
            seen[key] = frozenset(id(v) for v in g.values()
                                  if inspect.ismodule(v) and v in (tl, tl.core))
        return seen[key]

    def patch_lang(fn):
        caller = sys._getframe(1).f_locals.get("self")
        if isinstance(caller, helper) and under_way:
            mine = langs(fn)
            if mine and mine <= under_way[-1]:
                return _Nothing()   # a helper inside a launch: its language is patched
            scope = original(fn)
            under_way[-1] = under_way[-1] | mine   # and stays so until the launch ends
            return scope
        scope = original(fn)
        if isinstance(caller, launch) and hasattr(scope, "restore"):
            under_way.append(langs(fn))
            restore = scope.restore

            def restore_and_pop():
                try:
                    restore()
                finally:
                    under_way.pop()   # launches end innermost first
            scope.restore = restore_and_pop
        return scope

    patch_lang._fastvae_once = True
    interpreter._patch_lang = patch_lang
    _memoize_np_dtype(interpreter, tl)
    return True


def _memoize_np_dtype(interpreter, tl) -> None:
    """``_get_np_dtype`` looked up once per scalar type: a block's answer is its element
    type's (Triton's own function reads nothing else of it)."""
    original = getattr(interpreter, "_get_np_dtype", None)
    if original is None:
        return
    memo = {}

    def get_np_dtype(tt_dtype):
        key = tt_dtype.element_ty if isinstance(tt_dtype, tl.block_type) else tt_dtype
        try:
            return memo[key]
        except KeyError:
            memo[key] = found = original(key)
            return found
        except TypeError:   # an unhashable type: Triton's own answer, unmemoized
            return original(tt_dtype)

    get_np_dtype.original = original
    interpreter._get_np_dtype = get_np_dtype
