"""One module per benchmarked op; each holds the op's inputs, variants, baselines,
bytes moved and default grids, and lists its :class:`~fastvae.bench.core.Op` objects
in ``OPS``.

Every public module here is imported and its ``OPS`` registered, so a new spec needs
no line elsewhere. ``ORDER`` (optional) places a spec's ops in the default tables and
in ``--help``; specs without it follow, by module name. Modules whose names start with
``_`` are shared helpers, not specs.
"""
import importlib
import pkgutil

from ..core import register


def _load():
    modules = [importlib.import_module(f"{__name__}.{m.name}")
               for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    for module in sorted(modules, key=lambda m: (getattr(m, "ORDER", float("inf")),
                                                 m.__name__)):
        register(*module.OPS)


_load()
