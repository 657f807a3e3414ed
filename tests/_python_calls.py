"""The host-cost tests' measure: Python-level calls, which do not vary with the machine."""
from __future__ import annotations

import sys


def python_calls(fn) -> int:
    """Python-level calls ``fn`` makes (benchmarks/host_path.py's ``py calls``)."""
    calls = []
    sys.setprofile(lambda frame, event, arg: calls.append(event)
                   if event in ("call", "c_call") else None)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return len(calls)
