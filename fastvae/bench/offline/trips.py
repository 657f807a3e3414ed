"""How many times a kernel's loop body runs in one launch, from its Python source.

A SASS loop's backward branch carries the source line of its ``for`` statement (Triton
compiles with line info). :func:`executions` finds that statement in the kernel's source
(or in a ``@triton.jit`` helper it calls) and evaluates, with the launch's arguments,
constexprs and grid, the ``range`` of the loop and of every enclosing loop, the
conditions of the enclosing ``if`` statements (``flags`` bits and ``tl.program_id`` are
known per launch) and the simple assignments before them. Program-dependent ranges
(a grid-stride loop) are summed program by program. What cannot be evaluated is
reported as unknown, never guessed.
"""
from __future__ import annotations

import ast
import functools
import operator
import sys
from typing import Callable, Dict, List, Optional, Tuple


class Unknown(Exception):
    """An expression the evaluator cannot give a value to."""


class _Pid:
    """Marks that an evaluation used the program id."""

    def __init__(self, value: int):
        self.value, self.used = value, False


_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv, ast.Div: operator.truediv, ast.Mod: operator.mod,
           ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor,
           ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.Pow: operator.pow}
_CMPS = {ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
         ast.Eq: operator.eq, ast.NotEq: operator.ne}


def _cdiv(a, b):
    return -(-a // b)


_CALLS = {"cdiv": _cdiv, "min": min, "max": max, "minimum": min, "maximum": max, "int": int,
          "abs": abs}


def _callee(call: ast.Call) -> Optional[str]:
    """The called function's name: ``f(...)`` and ``module.f(...)`` alike."""
    return getattr(call.func, "id", None) or getattr(call.func, "attr", None)


def _value(v):
    v = getattr(v, "value", v)  # tl.constexpr
    if isinstance(v, bool):     # a flag: REDUCE=True, as Triton's ``if`` reads it
        return int(v)
    if not isinstance(v, (int, float)):
        raise Unknown(repr(v))
    return v


class _Eval:
    def __init__(self, env: Dict[str, object], globs: Dict[str, object], pid: _Pid, grid):
        self.env, self.globs, self.pid, self.grid = env, globs, pid, grid

    def __call__(self, node):
        m = getattr(self, "_" + type(node).__name__, None)
        if m is None:
            raise Unknown(type(node).__name__)
        return m(node)

    def _Constant(self, n):
        if isinstance(n.value, (int, float)) and not isinstance(n.value, bool):
            return n.value
        raise Unknown(repr(n.value))

    def _Name(self, n):
        if n.id in self.env:
            v = self.env[n.id]
            if isinstance(v, _Pid):
                v.used = True
                return v.value
            return _value(v)
        if n.id in self.globs:
            return _value(self.globs[n.id])
        raise Unknown(n.id)

    def _BinOp(self, n):
        op = _BINOPS.get(type(n.op))
        if op is None:
            raise Unknown(type(n.op).__name__)
        return op(self(n.left), self(n.right))

    def _UnaryOp(self, n):
        v = self(n.operand)
        if isinstance(n.op, ast.USub):
            return -v
        if isinstance(n.op, ast.Not):
            return int(not v)
        if isinstance(n.op, ast.Invert):
            return ~v
        return v

    def _Compare(self, n):
        left = self(n.left)
        for op, right in zip(n.ops, n.comparators):
            r = self(right)
            if type(op) not in _CMPS:
                raise Unknown(type(op).__name__)
            if not _CMPS[type(op)](left, r):
                return 0
            left = r
        return 1

    def _BoolOp(self, n):
        vals = [self(v) for v in n.values]
        return int(all(vals)) if isinstance(n.op, ast.And) else int(any(vals))

    def _IfExp(self, n):
        return self(n.body) if self(n.test) else self(n.orelse)

    def _Call(self, n):
        f = n.func
        name = _callee(n)
        if name in ("program_id", "num_programs"):
            axis = self(n.args[0]) if n.args else 0
            if name == "num_programs":
                return self.grid[axis] if axis < len(self.grid) else 1
            self.pid.used = True   # the flat index, axis 0 fastest (as CUDA's block order)
            index = self.pid.value
            for a in range(axis):
                index //= self.grid[a] if a < len(self.grid) else 1
            return index % self.grid[axis] if axis < len(self.grid) else 0
        if name in ("to", "cast", "multiple_of", "max_contiguous") and isinstance(f, ast.Attribute):
            return self(f.value) if name == "to" else self(n.args[0])
        if name in _CALLS:
            return _CALLS[name](*[self(a) for a in n.args])
        helper = _returned_expression(self.globs.get(name) if isinstance(f, ast.Name) else None)
        if helper is not None:   # a @triton.jit helper that is one ``return <expr>``
            params, expr = helper
            env = dict(zip(params, [self(a) for a in n.args]))
            env.update((k.arg, self(k.value)) for k in n.keywords)
            return _Eval(env, self.globs, self.pid, self.grid)(expr)
        raise Unknown(f"call {name}")


def _returned_expression(fn):
    """(parameter names, the returned expression) of a ``@triton.jit`` function whose body
    is one ``return`` (after its docstring), else None."""
    code = getattr(getattr(fn, "fn", None), "__code__", None)
    if code is None:
        return None
    tree = _tree(code.co_filename)[0]
    node = next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)
                 and n.name == code.co_name and n.lineno <= code.co_firstlineno + 2), None)
    if node is None:
        return None
    body = [b for b in node.body if not (isinstance(b, ast.Expr)
                                          and isinstance(b.value, ast.Constant))]
    if len(body) != 1 or not isinstance(body[0], ast.Return) or body[0].value is None:
        return None
    return [a.arg for a in node.args.args], body[0].value


def _range(ev: _Eval, call) -> range:
    """The values a ``for`` iterates: ``range``/``tl.range`` (``tl.static_range`` is
    unrolled at compile time: no loop is left of it)."""
    if not isinstance(call, ast.Call):
        raise Unknown("not a range call")
    name = _callee(call)
    if name not in ("range",):
        raise Unknown(f"for over {name}")
    return range(*[int(ev(a)) for a in call.args[:3]])


@functools.lru_cache(maxsize=None)
def _tree(path: str):
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    return tree, parents


def _module_globals(path: str) -> Dict[str, object]:
    for mod in list(sys.modules.values()):
        if getattr(mod, "__file__", None) == path:
            return vars(mod)
    return {}


def _functions(paths) -> Dict[str, Tuple[str, ast.FunctionDef]]:
    out = {}
    for p in paths:
        for node in ast.walk(_tree(p)[0]):
            if isinstance(node, ast.FunctionDef):
                out.setdefault(node.name, (p, node))
    return out


def _statement_path(node, func, parents) -> List[ast.stmt]:
    """The statements from ``func``'s body down to (and including) ``node``'s statement."""
    chain = []
    while node is not func:
        if isinstance(node, ast.stmt):
            chain.append(node)
        node = parents[node]
    return chain[::-1]


def _assign(stmt, ev: _Eval) -> None:
    """Track a straight-line assignment; anything else forgets the names it binds."""
    target = (stmt.targets[0] if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
              else stmt.target if isinstance(stmt, ast.AnnAssign) and stmt.value is not None
              else None)   # ``NAME: tl.constexpr = ...`` binds as ``NAME = ...`` does
    if isinstance(target, ast.Name):
        name = target.id
        call = stmt.value
        is_pid = (isinstance(call, ast.Call) and getattr(call.func, "attr", None) == "program_id")
        try:
            ev.env[name] = ev.pid if is_pid else ev(stmt.value)
        except Unknown:
            ev.env.pop(name, None)
        return
    for node in ast.walk(stmt):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            ev.env.pop(node.id, None)


def _count(block, path, ev: _Eval, leaf: Callable[[_Eval], Tuple[int, int]],
           notes: List[str]) -> Tuple[int, int]:
    """(fewest, most) times the last statement of ``path`` runs per pass over ``block``
    (which holds the path's first statement), times ``leaf`` there: an ``if`` whose
    condition is unknown (a loaded value) counts as not taken, then as taken."""
    target = path[0]
    for stmt in block:
        if stmt is target:
            break
        _assign(stmt, ev)
    if len(path) == 1:
        return leaf(ev)
    nxt = path[1]
    if isinstance(target, ast.For):
        values = _range(ev, target.iter)
        var = target.target.id if isinstance(target.target, ast.Name) else None
        scale = 1
        if len(values) > 4096:  # a long outer loop: one pass, scaled
            values, scale = values[:1], len(values)
        lo = hi = 0
        for v in values:
            sub = _Eval(dict(ev.env, **({var: v} if var else {})), ev.globs, ev.pid, ev.grid)
            a, b = _count(target.body, path[1:], sub, leaf, notes)
            lo, hi = lo + a, hi + b
        return lo * scale, hi * scale
    if isinstance(target, ast.If):
        in_body = any(nxt is s for s in target.body)
        branch = target.body if in_body else target.orelse
        try:
            cond = bool(_ticket(ev, target.test) if _is_ticket(target.test) else ev(target.test))
        except Unknown as e:
            note = f"line {target.lineno}: condition unknown ({e}): not taken .. taken"
            if note not in notes:
                notes.append(note)
            return 0, _count(branch, path[1:], ev, leaf, notes)[1]
        if cond != in_body:
            return 0, 0
        return _count(branch, path[1:], ev, leaf, notes)
    if isinstance(target, (ast.With, ast.While)):
        return _count(target.body, path[1:], ev, leaf, notes)
    raise Unknown(f"line {target.lineno}: {type(target).__name__} on the way to the loop")


def _is_ticket(test) -> bool:
    """``if last_ticket(COUNTER, n):`` (kernels/reduce.py): taken by one program of n."""
    return isinstance(test, ast.Call) and len(test.args) == 2 and _callee(test) == "last_ticket"


def _ticket(ev: _Eval, test: ast.Call) -> bool:
    """Which program takes the ticket branch does not matter to the count: the last of
    each n (a one-axis grid: the program n - 1)."""
    n = int(ev(test.args[1]))
    ev.pid.used = True
    return ev.pid.value % n == n - 1


def _calls(caller: ast.FunctionDef) -> List[ast.Call]:
    return [n for n in ast.walk(caller) if isinstance(n, ast.Call)]


def _calls_to(caller: ast.FunctionDef, name: str) -> List[ast.Call]:
    return [n for n in _calls(caller) if _callee(n) == name]


def _call_chain(kfunc: ast.FunctionDef, func: ast.FunctionDef, funcs) -> Optional[list]:
    """The functions through which the kernel reaches ``func`` (the shortest chain of
    helpers, ``func`` last), or None."""
    seen, frontier = {kfunc.name}, [(kfunc, [])]
    while frontier:
        nxt = []
        for caller, chain in frontier:
            if _calls_to(caller, func.name):
                return chain + [func]
            for n in _calls(caller):
                name = _callee(n)
                if name in funcs and name not in seen:
                    seen.add(name)
                    nxt.append((funcs[name][1], chain + [funcs[name][1]]))
        frontier = nxt
    return None


def _call_args(call: ast.Call, func: ast.FunctionDef, ev: _Eval) -> Dict[str, object]:
    env = {}
    params = [a.arg for a in func.args.args]
    for name, arg in [*zip(params, call.args), *((k.arg, k.value) for k in call.keywords)]:
        if isinstance(arg, ast.Name) and isinstance(ev.env.get(arg.id), _Pid):
            env[name] = ev.env[arg.id]
            continue
        try:
            env[name] = ev(arg)
        except Unknown:
            pass
    return env


def executions(kernel, file: str, line: int, args: Dict[str, object],
               grid: Tuple[int, ...]) -> Tuple[Optional[Tuple[int, int]], List[str]]:
    """((fewest, most) executions of the body of the ``for`` at ``file:line`` over the
    whole launch, or None; notes) for the ``@triton.jit`` function ``kernel`` launched with ``args``
    (names to values: ints, floats, constexprs) on ``grid``."""
    notes: List[str] = []
    kfile = kernel.fn.__code__.co_filename
    tree, parents = _tree(file)
    loop = next((n for n in ast.walk(tree) if isinstance(n, ast.For) and n.lineno == line), None)
    if loop is None:
        return None, [f"{file}:{line} is not a for statement"]
    func = loop
    while not isinstance(func, ast.FunctionDef):
        func = parents[func]
    kfunc = _functions([kfile])[kernel.fn.__name__][1]
    files = sorted({kfile, file})
    globs_of = {p: _module_globals(p) for p in files}
    funcs = _functions(files)
    programs = 1
    for g in grid:
        programs *= g

    def in_kernel(pid: _Pid) -> Tuple[int, int]:
        env = {k: v for k, v in args.items() if isinstance(v, (int, float))}
        ev = _Eval(env, globs_of[kfile], pid, grid)
        def loop_leaf(e):
            n = len(_range(e, loop.iter))
            return n, n
        if func is kfunc:
            return _count(kfunc.body, _statement_path(loop, kfunc, parents), ev, loop_leaf, notes)
        # a helper: the calls that lead to it from the kernel, then the loop inside it
        chain = _call_chain(kfunc, func, funcs)
        if chain is None:
            raise Unknown(f"{func.name} is not reached from {kernel.fn.__name__}")

        def through(i: int, caller: ast.FunctionDef, e: _Eval) -> Tuple[int, int]:
            """The loop's passes over every call of ``chain[i]`` in ``caller``, summed."""
            callee = chain[i]
            cparents = _tree(funcs[caller.name][0])[1]
            lo = hi = 0
            for site in _calls_to(caller, callee.name):
                def at_site(e2: _Eval, site=site) -> Tuple[int, int]:
                    hev = _Eval(_call_args(site, callee, e2), globs_of[funcs[callee.name][0]],
                                e2.pid, grid)
                    if i + 1 == len(chain):
                        return _count(callee.body, _statement_path(loop, callee, parents), hev,
                                      loop_leaf, notes)
                    return through(i + 1, callee, hev)
                a, b = _count(caller.body, _statement_path(site, caller, cparents),
                              _Eval(dict(e.env), e.globs, e.pid, grid), at_site, notes)
                lo, hi = lo + a, hi + b
            return lo, hi
        return through(0, kfunc, ev)

    try:
        probe = _Pid(0)
        first = in_kernel(probe)
        if not probe.used:
            return (first[0] * programs, first[1] * programs), notes
        if programs > 1 << 17:
            notes.append("program-dependent loop over more than 2^17 programs: not summed")
            return None, notes
        lo, hi = first
        for p in range(1, programs):
            a, b = in_kernel(_Pid(p))
            lo, hi = lo + a, hi + b
        return (lo, hi), notes
    except Unknown as e:
        notes.append(f"{file.rsplit('/', 1)[-1]}:{line}: {e}")
        return None, notes
