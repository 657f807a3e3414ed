"""Reading SASS (``nvdisasm -c -g`` output): instructions, control flow, loops.

Loops are found from backward branches: a branch whose target lies at or before it
closes a loop whose body is the address range [target, branch] (the compiler lays a
loop out contiguously; nested loops nest as ranges). A *region* is the code of one loop
without its inner loops, or the code outside every loop. Per region two counts bound
the instructions one pass executes: ``static`` (every instruction of the region: each
branch taken both ways) and ``shortest`` (the cheapest path through it: from the loop's
head to its backward branch, or from the entry to an exit). Predicated instructions
issue whether or not their predicate holds, so they count in both.
"""
from __future__ import annotations

import dataclasses
import heapq
import re
from typing import Dict, List, Optional, Tuple

_FILE = re.compile(r'//## File "(?P<file>[^"]+)", line (?P<line>\d+)')
_LABEL = re.compile(r"^\s*(?P<label>\.L\w+):")
_INSN = re.compile(r"^\s*/\*(?P<addr>[0-9a-f]{4,})\*/\s+(?P<body>.*?)\s*;")
_PRED = re.compile(r"^@(?P<neg>!?)(?P<pred>U?P(?:T|\d+))\s+")
_TARGET = re.compile(r"`\((?P<label>\.L\w+)\)|\b0x(?P<addr>[0-9a-f]+)\b")
# Control flow: where the next instruction is not simply the following one.
_BRANCHES = ("BRA", "BRX", "JMP", "JMX", "CALL", "RET", "EXIT", "BREAK", "KILL", "BPT")


@dataclasses.dataclass
class Insn:
    addr: int
    opcode: str               # with modifiers: "MUFU.EX2", "LDG.E.128"
    operands: str
    pred: Optional[str]       # "P0", "!P3", None (always), "PT" counts as None
    file: Optional[str]
    line: Optional[int]
    target: Optional[int] = None   # branch target address

    @property
    def op(self) -> str:
        return self.opcode.split(".")[0]

    @property
    def conditional(self) -> bool:
        return self.pred is not None

    def ends_flow(self) -> bool:
        """No fall-through: an unconditional branch, exit or return."""
        return not self.conditional and self.op in ("BRA", "JMP", "EXIT", "RET", "BRX", "JMX",
                                                      "KILL")


@dataclasses.dataclass
class Loop:
    head: int                 # index of the first instruction of the body
    back: int                 # index of the backward branch
    parent: Optional[int] = None   # index in the loop list of the enclosing loop
    depth: int = 0

    def contains(self, i: int) -> bool:
        return self.head <= i <= self.back


def parse(text: str) -> List[Insn]:
    """The instructions of the first kernel in ``text``, in address order, with their
    source file and line (the ``//## File`` comment before them)."""
    insns: List[Insn] = []
    labels: Dict[str, int] = {}
    pending: List[Tuple[Insn, str]] = []
    file = line = None
    for raw in text.splitlines():
        m = _FILE.search(raw)
        if m:
            file, line = m.group("file"), int(m.group("line"))
            continue
        m = _LABEL.match(raw)
        if m:
            labels[m.group("label")] = len(insns)
            continue
        m = _INSN.match(raw)
        if not m:
            continue
        body = m.group("body")
        pred = None
        p = _PRED.match(body)
        if p:
            body = body[p.end():]
            if p.group("pred") not in ("PT", "UPT") or p.group("neg"):
                pred = p.group("neg") + p.group("pred")
        opcode, _, operands = body.partition(" ")
        ins = Insn(int(m.group("addr"), 16), opcode, operands.strip(), pred, file, line)
        if ins.op in ("BRA", "BRX", "JMP", "CALL", "BREAK"):
            t = _TARGET.search(operands)
            if t:
                pending.append((ins, t.group("label") or t.group("addr")))
        insns.append(ins)
    by_addr = {ins.addr: i for i, ins in enumerate(insns)}
    for ins, where in pending:
        idx = labels.get(where) if where.startswith(".L") else by_addr.get(int(where, 16))
        if idx is not None and idx < len(insns):
            ins.target = insns[idx].addr
    return insns


def _index(insns: List[Insn]) -> Dict[int, int]:
    return {ins.addr: i for i, ins in enumerate(insns)}


def successors(insns: List[Insn], i: int, at: Dict[int, int]) -> List[int]:
    ins = insns[i]
    out = []
    if ins.target is not None and ins.op in ("BRA", "JMP", "BREAK"):
        out.append(at[ins.target])
    if not ins.ends_flow() and i + 1 < len(insns):
        out.append(i + 1)
    return out


def reachable(insns: List[Insn]) -> List[bool]:
    """Which instructions the entry can reach (not the padding after the last exit)."""
    at = _index(insns)
    seen = [False] * len(insns)
    stack = [0] if insns else []
    while stack:
        i = stack.pop()
        if seen[i]:
            continue
        seen[i] = True
        stack.extend(s for s in successors(insns, i, at) if not seen[s])
    return seen


def loops(insns: List[Insn]) -> List[Loop]:
    """Every loop closed by a reachable backward branch, outermost first, with nesting."""
    live = reachable(insns)
    at = _index(insns)
    found = []
    for i, ins in enumerate(insns):
        if live[i] and ins.op == "BRA" and ins.target is not None and ins.target <= ins.addr:
            head = at[ins.target]
            if head == i:      # a branch to itself: the trap after the last exit
                continue
            found.append(Loop(head, i))
    found.sort(key=lambda lp: (lp.head, -lp.back))
    for j, lp in enumerate(found):
        enclosing = [k for k in range(j) if found[k].contains(lp.head) and found[k].contains(lp.back)
                     and (found[k].head, found[k].back) != (lp.head, lp.back)]
        if enclosing:
            lp.parent = max(enclosing, key=lambda k: found[k].head)
            lp.depth = found[lp.parent].depth + 1
    return found


def region_of(all_loops: List[Loop], i: int) -> Optional[int]:
    """The innermost loop holding instruction ``i`` (None: outside every loop)."""
    best = None
    for j, lp in enumerate(all_loops):
        if lp.contains(i) and (best is None or lp.depth > all_loops[best].depth):
            best = j
    return best


@dataclasses.dataclass
class Region:
    loop: Optional[int]             # index into the loop list, None for the outer code
    static: int                     # instructions in the region
    shortest: int                   # instructions on its cheapest pass
    mufu_static: int
    mufu_shortest: int
    lines: Dict[Tuple[str, int], int]   # source line -> instructions in the region
    back_line: Optional[Tuple[str, int]] = None   # source line of the backward branch


def _shortest(insns, at, owner, all_loops, region, start, goals, weight) -> int:
    """Cheapest sum of ``weight`` from ``start`` to any of ``goals``, moving inside the
    region and its inner loops (whose instructions cost nothing here: they are regions
    of their own)."""
    def cost(i):
        return weight(i) if owner[i] == region else 0

    dist = {start: cost(start)}
    heap = [(dist[start], start)]
    while heap:
        d, i = heapq.heappop(heap)
        if i in goals:
            return d
        if d > dist.get(i, 1 << 60):
            continue
        for s in successors(insns, i, at):
            if region is not None and not _descends(all_loops, owner[s], region):
                continue
            nd = d + cost(s)
            if nd < dist.get(s, 1 << 60):
                dist[s] = nd
                heapq.heappush(heap, (nd, s))
    return 0


def _descends(all_loops: List[Loop], j: Optional[int], ancestor: int) -> bool:
    while j is not None:
        if j == ancestor:
            return True
        j = all_loops[j].parent
    return False


def regions(insns: List[Insn]) -> Tuple[List[Loop], List[Region]]:
    """The loops and the regions: one per loop (in the loop list's order), then the
    code outside every loop."""
    all_loops = loops(insns)
    live = reachable(insns)
    at = _index(insns)
    owner = [region_of(all_loops, i) for i in range(len(insns))]
    out = []
    for r in [*range(len(all_loops)), None]:
        members = [i for i in range(len(insns)) if live[i] and owner[i] == r]
        lines: Dict[Tuple[str, int], int] = {}
        for i in members:
            key = (insns[i].file, insns[i].line)
            lines[key] = lines.get(key, 0) + 1
        is_mufu = [insns[i].op == "MUFU" for i in range(len(insns))]
        if r is None:
            goals = {i for i in members if insns[i].op == "EXIT"}
            start = 0
        else:
            goals = {all_loops[r].back}
            start = all_loops[r].head
        short = _shortest(insns, at, owner, all_loops, r, start, goals, lambda i: 1)
        short_mufu = _shortest(insns, at, owner, all_loops, r, start, goals, lambda i: int(is_mufu[i]))
        back = insns[all_loops[r].back] if r is not None else None
        out.append(Region(r, len(members), short, sum(is_mufu[i] for i in members),
                          short_mufu, lines, (back.file, back.line) if back else None))
    return all_loops, out


def opcode_counts(insns: List[Insn], members=None) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for i in (range(len(insns)) if members is None else members):
        out[insns[i].op] = out.get(insns[i].op, 0) + 1
    return out
