"""A plan kept outside its host function's cache, by a prepared function (``elbo_prepare``,
``scale_prepare``): it is looked up again whenever what plans depend on besides their keys
may have changed: the tile mode (``configs``), an emptied plan cache
(``_launch.plans_changed``) or the source of the SM count (``_launch.sm_count``, replaced
by the offline capture or a test)."""
from __future__ import annotations

from typing import Callable

from . import _launch, configs


class Kept:
    """``lookup(*args)``'s plan, looked up again only when the state the module's docstring
    names changed (read before the lookup, so a change during it is seen by the next call;
    read in :meth:`get` itself, which every prepared call runs)."""

    __slots__ = ("lookup", "plan", "state")

    def __init__(self, lookup: Callable):
        self.lookup, self.plan, self.state = lookup, None, None

    def get(self, *args):
        state = (configs.interpreter_tiles(), _launch.generation, _launch.sm_count)
        if state != self.state:
            self.plan, self.state = self.lookup(*args), state
        return self.plan
