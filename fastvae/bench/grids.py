"""Which cases run: the cartesian grid, the default grids of ``fastvae bench`` (each op's
spec gives its shapes) and the grids of the pytest-benchmark suites."""
from __future__ import annotations

import argparse
import os
from typing import Dict, List, Optional, Sequence

import torch

from .._dtypes import widest
from ..options import auto_device, positive_int
from .core import DTYPE_NAMES, DTYPES, OPS, Case, get_op
from .timing import is_cuda

# The default grid's name per (--quick, device): keys of each spec's ``grids``.
GRID_NAMES = {(True, False): "quick", (True, True): "quick_cuda",
              (False, False): "cpu", (False, True): "cuda"}
# Axes a spec's grid leaves out.
DEFAULT_AXES = dict(batch=[4096], dim=[784], latent=[32])
# The pytest suites' grid, before the op's ``suite_cpu`` / ``suite_cuda`` overrides.
SUITE_CPU = dict(batch=[256, 4096, 32768], dim=[784, 3072], latent=[32, 128])
SUITE_CUDA = dict(SUITE_CPU, batch=[256, 4096, 32768, 65536])
# Largest tensor a case may hold: 512 MiB of fp32 on the CPU, 2 GiB on a GPU.
MAX_ELEMENTS_CPU, MAX_ELEMENTS_CUDA = 1 << 27, 1 << 29


def max_elements_default(device: str) -> int:
    return MAX_ELEMENTS_CUDA if is_cuda(device) else MAX_ELEMENTS_CPU


def max_elements_of(args: argparse.Namespace, device: str) -> int:
    """``--max-elements``, else the device's default."""
    return args.max_elements if args.max_elements is not None else max_elements_default(device)


def cases(ops: Sequence[str], batches: Sequence[int], dims: Sequence[int],
          latents: Sequence[int], *, dtypes: Sequence[torch.dtype] = (torch.float32,),
          device: str = "cpu", ks: Optional[Dict[str, Sequence[int]]] = None,
          max_elements: Optional[int] = None, skipped: Optional[list] = None) -> List[Case]:
    """The cartesian grid, minus cases whose largest tensor exceeds ``max_elements``
    (appended to ``skipped``) and shapes that do not apply (an op without D runs at
    the first D only). ``ks``: K values per op, instead of its spec's ``k_values``."""
    out = []
    for name in ops:
        op = get_op(name)
        op_ks = (ks or {}).get(name) or op.k_values or (1,)
        op_dims = dims if op.uses_dim else dims[:1]
        for dt in dtypes:
            for d in op_dims:
                for l in latents:
                    for k in op_ks:
                        for b in batches:
                            c = Case(name, b, d, l, k, dt, device)
                            if max_elements is not None and c.largest_elements() > max_elements:
                                if skipped is not None:
                                    skipped.append(c)
                                continue
                            out.append(c)
    return out


def suite_cases(op: str, device: Optional[str] = None) -> List[Case]:
    """The pytest-benchmark grid of ``op``: :data:`SUITE_CPU` (:data:`SUITE_CUDA` on a
    GPU) with the op's overrides, fp32 (+bf16 on a GPU), K per the op. Cases whose
    largest tensor exceeds ``FASTVAE_BENCH_MAX_ELEMENTS`` are left out (default as
    ``fastvae bench``'s ``--max-elements``: IWAE K=50 at B=65536, D=3072 would need
    40 GB a tensor, several times over)."""
    device = auto_device(device or "auto")
    cuda = is_cuda(device)
    axes = dict(SUITE_CUDA if cuda else SUITE_CPU,
                **get_op(op).grids.get("suite_cuda" if cuda else "suite_cpu", {}))
    dtypes = [torch.float32, torch.bfloat16] if cuda else [torch.float32]
    given = os.environ.get("FASTVAE_BENCH_MAX_ELEMENTS")
    try:
        max_el = max_elements_default(device) if given is None else positive_int(given)
    except ValueError as e:   # (BadValue) a collection error that names the variable
        raise ValueError(f"FASTVAE_BENCH_MAX_ELEMENTS {e}") from None
    return cases([op], axes["batch"], axes["dim"], axes["latent"], dtypes=dtypes,
                 device=device, max_elements=max_el)


def k_dest(flag: str) -> str:
    """The argparse attribute of a K flag: ``--k-iwae`` -> ``k_iwae``."""
    return flag.lstrip("-").replace("-", "_")


def quick_shapes() -> str:
    """The CPU --quick grid in words, from the specs (``--help`` says what it runs):
    ``elbo, train_mlp B=4096 D=784 L=32; iwae B=256 D=784 L=32 K=5; ...``."""
    args = argparse.Namespace(quick=True, ops=None, dtype=None, max_elements=None,
                              batch=None, dim=None, latent=None)
    by_shape: Dict[str, List[str]] = {}
    for c in grid_from_args(args, "cpu", []):
        by_shape.setdefault(c.shape, []).append(c.op)
    absent = [n for n, op in OPS.items() if GRID_NAMES[(True, False)] not in op.grids]
    return "; ".join(f"{', '.join(ops)} {shape}" for shape, ops in by_shape.items()) + (
        f"; not {', '.join(absent)}" if absent else "")


def quick_ops() -> str:
    """The ops --quick runs without --ops, in words (``--help`` says it): the CPU's and a
    GPU's quick grids hold different ops."""
    on = {where: ", ".join(ops_of(argparse.Namespace(quick=True, ops=None), device))
          for where, device in (("the CPU", "cpu"), ("a GPU", "cuda"))}
    return "; ".join(f"on {where} {ops}" for where, ops in on.items())


def ops_of(args: argparse.Namespace, device: str) -> List[str]:
    """The ops ``fastvae bench`` runs: ``--ops``, else those of the default grid."""
    grid = GRID_NAMES[(bool(args.quick), is_cuda(device))]
    return args.ops or [n for n, op in OPS.items() if grid in op.grids]


def size_problem(ops: Sequence[str], dims: Optional[Sequence[int]],
                 latents: Optional[Sequence[int]]) -> Optional[str]:
    """Why ``--dim`` / ``--latent`` cannot run ``ops`` (each op's :attr:`~.core.Op.needs`),
    as ``--flag: ...`` naming the value, the ops and what they need; None where every op
    can run at every value. (An op without D ignores --dim.)"""
    for flag, axis, values in (("--dim", "dim", dims), ("--latent", "latent", latents)):
        for v in values or ():
            bad = {}
            for name in ops:
                why = get_op(name).refuses(axis, v)
                if why:
                    bad[name] = why
            if bad:
                rest = [n for n in ops if n not in bad]
                hint = (f"give another {flag}, or run without {'it' if len(bad) == 1 else 'them'}"
                        f": --ops {','.join(rest)}" if rest else f"give another {flag}")
                return (f"{flag}: {', '.join(bad)} cannot run at {flag} {v} ("
                        + "; ".join(f"{n} needs {why}" for n, why in bad.items())
                        + f"); {hint}")
    return None


def dtype_problem(dtypes: Optional[Sequence[str]], device) -> Optional[str]:
    """Why ``--dtype`` cannot run on ``device`` (a torch.device or its name): a dtype it
    has no tensors of (MPS: no float64), found before any case runs instead of as its
    error; None where every one can."""
    device = torch.device(device)
    wide = widest(device)
    bad = [d for d in dtypes or () if DTYPES[d].itemsize > wide.itemsize]
    if bad:
        return (f"--dtype: {device.type} has no {', '.join(bad)} (its widest float is "
                f"{DTYPE_NAMES[wide]}); drop {'it' if len(bad) == 1 else 'them'}")
    return None


def grid_from_args(args: argparse.Namespace, device: str, skipped: list) -> List[Case]:
    """The cases ``fastvae bench`` measures: each op's quick or default shapes (from
    its spec), with every shape flag given on the command line replacing that axis
    for all ops. ``--ops`` may name an op outside the chosen grid: it runs at its CPU
    default shapes. A --dim / --latent an op cannot take is a ValueError, raised before
    anything is measured (:func:`size_problem`)."""
    grid = GRID_NAMES[(bool(args.quick), is_cuda(device))]
    ops = ops_of(args, device)
    problem = size_problem(ops, args.dim, args.latent)
    if problem:
        raise ValueError(problem)
    dtypes = [DTYPES[d] for d in (args.dtype or (["fp32", "bf16"] if is_cuda(device)
                                                 else ["fp32"]))]
    max_el = max_elements_of(args, device)
    out: List[Case] = []
    for name in ops:
        op = get_op(name)
        axes = dict(DEFAULT_AXES, **op.grids.get(grid, op.grids.get("cpu", {})))
        k = (getattr(args, k_dest(op.k_flag), None) if op.k_flag else None) or axes.get("k")
        out += cases([name], args.batch or axes["batch"], args.dim or axes["dim"],
                     args.latent or axes["latent"], dtypes=dtypes, device=device,
                     ks={name: k} if k else None, max_elements=max_el, skipped=skipped)
    return out
