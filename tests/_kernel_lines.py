"""Source lines of a Triton kernel's statements, as SASS line tables name them: the tests
of the speed proxy write SASS by hand and point its loops at the kernel's real lines."""
import inspect


def for_lines(kernel) -> list:
    """The file line numbers of each ``for`` in ``kernel`` (a ``@triton.jit`` function),
    in source order."""
    lines, first = inspect.getsourcelines(kernel.fn)
    return [first + i for i, s in enumerate(lines) if s.strip().startswith("for ")]


def tagged_line(kernel, tag: str) -> int:
    """The file line number of the line of ``kernel`` that ends with ``# tag``."""
    lines, first = inspect.getsourcelines(kernel.fn)
    return first + next(i for i, s in enumerate(lines) if s.rstrip().endswith("# " + tag))
