"""``fastvae bench --device mps``: MPS has no float64, and the agreement checks compared in
float64 with ``.double()`` on the device's tensors. They now widen through
``_dtypes.in_float64``, which copies to the CPU first where the device has none. With no
MPS here the CPU stands in for the device, where a copy to the CPU is no copy at all: so
one test checks where the comparison runs, the other that every check widens through
that one helper, never on the device by itself."""
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fastvae import _dtypes, bench
from fastvae.bench import core, harness


def test_a_device_without_float64_compares_on_the_cpu():
    cpu = torch.device("cpu")
    assert _dtypes.float64_device(torch.device("mps")) == cpu
    assert _dtypes.float64_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert _dtypes.float64_device(cpu) == cpu


class Float64OnlyFromTheHelper(TorchDispatchMode):
    """Raises at an op with a float64 tensor among its inputs or outputs unless every tensor
    it takes came out of ``in_float64`` (``inside``: the helper is running) or out of ops
    on such tensors: on a device without float64 those are the CPU's."""

    def __init__(self):
        super().__init__()
        self.host, self.kept, self.inside = set(), [], False

    def mark(self, t):
        self.host.add(id(t))
        self.kept.append(t)   # alive, so that no other tensor takes its id

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        on_host = self.inside or (ins and all(id(t) in self.host for t in ins))
        if on_host:
            for t in outs:
                self.mark(t)
        elif any(t.dtype == torch.float64 for t in ins + outs):
            raise AssertionError(f"{func} makes or takes float64 on the device")
        return out


@pytest.fixture
def watched(monkeypatch):
    """widest() answers float32 for the CPU, as on MPS, so that the variants run as there;
    the agreement checks run under :class:`Float64OnlyFromTheHelper`."""
    real_widest, real_in_float64 = _dtypes.widest, getattr(_dtypes, "in_float64", None)
    mode = Float64OnlyFromTheHelper()

    def in_float64(t):
        mode.inside = True
        try:
            out = real_in_float64(t)
        finally:
            mode.inside = False
        mode.mark(out)
        return out

    for mod in [m for name, m in sys.modules.items() if name.startswith("fastvae")]:
        if getattr(mod, "widest", None) is real_widest:
            monkeypatch.setattr(mod, "widest", lambda device: torch.float32)
        if real_in_float64 is not None and getattr(mod, "in_float64", None) is real_in_float64:
            monkeypatch.setattr(mod, "in_float64", in_float64)
    for name in ("disagreements", "check_agreement"):
        real = getattr(harness, name)

        def checked(*args, _real=real, **kw):
            with mode:
                return _real(*args, **kw)
        monkeypatch.setattr(harness, name, checked)
    return mode


CASES = [(op, torch.float32) for op in bench.OPS] + [("elbo", torch.bfloat16)]


@pytest.mark.parametrize("op, dtype", CASES, ids=[f"{o}-{d}" for o, d in CASES])
def test_the_agreement_checks_widen_off_the_device(watched, op, dtype):
    case = bench.Case(op, 8, 64, 3, k=max(bench.OPS[op].k_values or (1,)), dtype=dtype)
    names = [n for n in core.variant_names(op, "cpu") if n in ("eager", "fastvae-torch")]
    bench.prepare(case, names, warmup=0)
    assert watched.kept   # the checks ran, and widened through the helper
