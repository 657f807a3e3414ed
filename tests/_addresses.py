"""``own_elements``: every address a Triton kernel reads or writes under the interpreter is
one of the elements of the argument tensor its pointer came from (the Triton tile test
modules use it).

Checking that an address lies inside *some* argument lets through a padded row read past
x into recon_k, or mu read through logvar's pointer with a wrong stride. An address does
not say which base pointer it was formed from, so each launch runs twice: first on copies
of its tensors, each in an allocation of its own between sentinel guards, then on the
tensors themselves. Both runs make the same accesses in the same order (pointers and masks
depend on the arguments' values, not their addresses), and an access from argument ``A``
moves by exactly the distance ``A``'s copy moved: that names its base. The copy run goes
straight to Triton's launch, so ``launches`` and other hooks see one launch.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

GUARD_BYTES = 4096   # past any one-row slip of the kernels tested, on each side of a copy


def _element_offsets(t):
    """Each element's offset from ``t.data_ptr()``, in elements."""
    off = torch.zeros((), dtype=torch.int64)
    for n, st in zip(t.shape, t.stride()):
        off = off.unsqueeze(-1) + torch.arange(n, dtype=torch.int64) * st
    return off.reshape(-1).numpy()


class _Arg:
    """One tensor argument: where its elements lie, and its copy for the first run."""

    def __init__(self, name, t):
        offs = _element_offsets(t)
        self.name, self.shape, self.es = name, tuple(t.shape), t.element_size()
        self.lo, self.hi = int(offs.min()), int(offs.max()) + 1   # in elements
        self.own = np.zeros(self.hi - self.lo, dtype=bool)
        self.own[offs - self.lo] = True
        self.ptr = t.data_ptr()
        guard = -(-GUARD_BYTES // self.es)
        buf = torch.empty(self.hi - self.lo + 2 * guard, dtype=t.dtype)
        buf.view(torch.uint8).fill_(0xFF)   # NaN in every float dtype
        buf[guard:guard + self.hi - self.lo] = t.as_strided(
            (self.hi - self.lo,), (1,), t.storage_offset() + self.lo)
        self.copy = buf.as_strided(t.shape, t.stride(), guard - self.lo)
        self.moved = self.copy.data_ptr() - self.ptr

    def strays(self, at):
        """Which of the addresses ``at`` (from this argument's pointer) miss its elements,
        and their offsets in elements."""
        rel = at.astype(np.int64) - self.ptr
        el, odd = np.divmod(rel, self.es)
        i = el - self.lo
        inside = (odd == 0) & (i >= 0) & (i < len(self.own))
        inside[inside] = self.own[i[inside]]
        return ~inside, el


class _Recorder:
    def __init__(self):
        self.run, self.args, self.seen, self.bad = None, {}, {}, []

    def start(self, args):
        self.args = {k: _Arg(k, v) for k, v in args.items()
                     if isinstance(v, torch.Tensor) and v.numel()}
        self.seen = {"copies": [], "tensors": []}
        return {**args, **{k: a.copy for k, a in self.args.items()}}

    def access(self, what, ptrs, mask):
        if self.run is None:
            return
        at = ptrs.data if mask is None else ptrs.data[np.broadcast_to(
            mask.data.astype(bool), ptrs.data.shape)]
        self.seen[self.run].append((what, np.array(at, dtype=np.uint64).reshape(-1)))

    def check(self, kernel):
        copies, tensors = self.seen["copies"], self.seen["tensors"]
        same = len(copies) == len(tensors) and all(
            a[0] == b[0] and a[1].shape == b[1].shape for a, b in zip(copies, tensors))
        if not same:
            self.bad.append(f"{kernel}: the run on copies made other accesses than the "
                            f"run on the tensors ({len(copies)} and {len(tensors)})")
        moved = {a.moved: a for a in self.args.values()}
        assert len(moved) == len(self.args), "two copies moved by the same distance"
        found = {}
        for (what, c), (_, t) in zip(copies, tensors):
            if not len(t):
                continue
            shift = (c - t).view(np.int64)   # wraps into the signed distance
            left = np.ones(t.shape, dtype=bool)
            for d, arg in moved.items():
                mine = shift == d
                left &= ~mine
                if mine.any():
                    stray, el = arg.strays(t[mine])
                    if stray.any():
                        key = (what, arg.name)
                        found.setdefault(key, [arg, []])[1].extend(el[stray].tolist())
            if left.any():
                found.setdefault((what, None), [None, []])[1].extend(t[left][:4].tolist())
        for (what, name), (arg, where) in found.items():
            if arg is None:
                self.bad.append(f"{kernel}: a {what} from no non-empty tensor argument, at "
                                f"{[hex(a) for a in where[:4]]}")
                continue
            self.bad.append(
                f"{kernel}: {len(where)} {what} lane(s) through {name} {list(arg.shape)} miss its "
                f"elements (offsets {arg.lo}..{arg.hi - 1}, in elements): at "
                f"{sorted(set(where))[:8]}")


@contextlib.contextmanager
def own_elements():
    """Under the interpreter: fail, naming the kernel, the pointer argument and the
    offsets, if a load, store or atomic of a kernel launched through ``_launch.launch``
    touches an address that is not an element of the tensor its pointer came from."""
    from triton.runtime import interpreter
    from fastvae import _env
    from fastvae.backends.triton_backend import _launch
    builder = getattr(interpreter, "InterpreterBuilder", None)
    if not _env.interpreting() or not hasattr(builder, "create_masked_load"):
        pytest.skip("checks the interpreter's addresses")
    rec, real_launch = _Recorder(), _launch.launch
    load, store = builder.create_masked_load, builder.create_masked_store
    rmw, cas = builder.create_atomic_rmw, builder.create_atomic_cas

    def launch(kernel, grid, **args):
        name = getattr(kernel, "__name__", None) or kernel.fn.__name__
        copies = rec.start(args)
        try:
            rec.run = "copies"
            _launch._triton_launch(kernel, grid, **copies)
            rec.run = "tensors"
            out = real_launch(kernel, grid, **args)
        finally:
            rec.run = None
        rec.check(name)
        # here, before the stray values fail a check of the outputs with a vaguer message
        assert not rec.bad, "\n".join(rec.bad)
        return out

    def masked_load(self, ptrs, mask, *a, **k):
        rec.access("load", ptrs, mask)
        return load(self, ptrs, mask, *a, **k)

    def masked_store(self, ptrs, value, mask, *a, **k):
        rec.access("store", ptrs, mask)
        return store(self, ptrs, value, mask, *a, **k)

    def atomic_rmw(self, op, ptr, val, mask, *a, **k):
        rec.access("atomic", ptr, mask)
        return rmw(self, op, ptr, val, mask, *a, **k)

    def atomic_cas(self, ptr, *a, **k):
        rec.access("atomic", ptr, None)
        return cas(self, ptr, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_launch, "launch", launch)
        mp.setattr(builder, "create_masked_load", masked_load)
        mp.setattr(builder, "create_masked_store", masked_store)
        mp.setattr(builder, "create_atomic_rmw", atomic_rmw)
        mp.setattr(builder, "create_atomic_cas", atomic_cas)
        yield
    assert not rec.bad, "\n".join(rec.bad)   # raised above, and caught by the code tested
