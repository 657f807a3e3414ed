"""tqdm progress bars on stderr, where tqdm is installed (``fastvae[train]``): a bar is
never a reason to stop."""
from __future__ import annotations

import sys


def progress_bar(total: int, desc: str, unit: str, *, terminal_only: bool = False):
    """A tqdm bar, or None without tqdm. ``terminal_only``: none where stderr is not a
    terminal (a log or a pipe would keep every redraw)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                file=sys.stderr, disable=None if terminal_only else False)
