"""fastvae.discretized_logistic_mixture_log_prob on the "torch" backend: no
B x C x M x H x W tensor is ever made, its C kernel (dmol_rows.c) and its aten fallback
for float32 (``cpu_path``) both match the float64 formula, and the kernel gives the same
bits for any thread count.

The op's values and gradients over its options, every backend:
tests/test_discretized_logistic_mixture_log_prob.py."""
from __future__ import annotations

import itertools

import pytest
import torch

import _formulas as F
from _backends import INTERPRET
from _compare import assert_close, grads, leaf
from _dmol import OP, check, make


# -- the "torch" backend's memory: no B x C x M x H x W tensor --------------------------

@pytest.mark.parametrize("native", [True, False], ids=["kernel", "aten"])
def test_torch_backend_makes_no_full_size_intermediate(native, monkeypatch):
    """Every tensor an aten op creates during the forward (value and gradient) holds at
    most a chunk's worth, except the gradient itself: eager autograd makes ~25 tensors
    of B x C x M x H x W elements. On the C kernel's path and on its aten fallback."""
    if INTERPRET:
        pytest.skip("the torch backend's own: runs in the main session")
    from fastvae.backends.torch_backend import native as N
    if not native:
        monkeypatch.setenv("FASTVAE_NATIVE", "0")
    N.reset()
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    b, c, h, w, m = 16, 3, 32, 32, 10   # a sample's parameters fit one chunk
    x, p = make(b, c, h, w, m, torch.float32)
    p.requires_grad_(True)
    full = b * c * m * h * w
    sizes = []

    class Sizes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            seen = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                    if isinstance(t, torch.Tensor)}
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                    sizes.append((t.numel(), tuple(t.shape), str(func)))  # new memory
            return out

    with Sizes():
        from fastvae.backends.torch_backend import discretized_logistic_mixture_log_prob as T
        T.discretized_logistic_mixture_log_prob_fwd(x, p.detach(), 8, "mean", -1.0, [True])
    big = [s for s in sizes if s[0] >= full // 4 and s[1] != tuple(p.shape)]
    assert not big, big[:5]
    assert any(s[1] == tuple(p.shape) for s in sizes)  # the gradient, allocated once
    monkeypatch.undo()
    N.reset()


# -- the "torch" backend's C kernel: its path, its aten fallback, its threads -----------

def _kernel_calls(monkeypatch):
    """A list that grows by one per call of the C kernel's wrapper."""
    from fastvae.backends.torch_backend import discretized_logistic_mixture_log_prob as T
    calls, real = [], T.native_rows

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "native_rows", counting)
    return calls


def test_kernel_and_its_fallback(seed, backend, cpu_path, monkeypatch):
    """float32 math on the "torch" backend runs the C kernel where it builds ("default")
    and aten ops with FASTVAE_NATIVE=0 ("aten"); both match the float64 formula, RGB and
    gray, at pixel counts that leave a partial vector and a partial tile (99 and 75
    pixels), channels-last parameters, and bfloat16 ones (upcast to float32 a chunk of
    samples at a time, the gradient rounded once)."""
    if backend != "torch":
        pytest.skip("the torch backend's two paths")
    from fastvae.backends.torch_backend import discretized_logistic_mixture_log_prob as T
    from fastvae.backends.torch_backend import native
    if cpu_path == "default" and native.load() is None:
        pytest.skip(f"C kernels unavailable here: {native.status()}")
    calls = _kernel_calls(monkeypatch)
    monkeypatch.setattr(T, "NATIVE_CHUNK", 500)
    for c, (b, h, w, m) in ((1, (3, 9, 11, 4)), (3, (2, 5, 15, 3))):
        x, p = make(b, c, h, w, m, torch.float32)
        check(x, p, backend)
        check(x, p.to(memory_format=torch.channels_last), backend)
    x, p = make(4, 3, 3, 5, 2)
    p = leaf(p.to(torch.bfloat16))        # 300 elements a sample: one sample a chunk
    got = OP(x.float(), p, backend=backend)
    want = F.dmol_log_prob(x, p)
    assert_close("log p", got, want, torch.float32, rtol=1e-5, scale=want.abs().max())
    got.sum().backward()
    (e,) = grads(want, [p])
    assert p.grad.dtype == torch.bfloat16
    assert_close("d/dparams", p.grad, e, torch.bfloat16, scale=e.abs().max())
    assert bool(calls) == (cpu_path == "default")


def test_kernel_same_bits_for_any_thread_count(monkeypatch):
    """Per-sample values and the gradient are the same bits for 1, 2 and 3 threads, on
    OpenMP or the Python pool: a sample's pixels are cut into units by the shape alone
    (here 4 units of at most 16 pixels), each summed by one thread in a fixed order."""
    if INTERPRET:
        pytest.skip("the torch backend's own: runs in the main session")
    from fastvae.backends.torch_backend import discretized_logistic_mixture_log_prob as T
    from fastvae.backends.torch_backend import native
    fn = T.native_kernel()
    if fn is None:
        pytest.skip(f"C kernels unavailable here: {native.status()}")
    monkeypatch.setattr(T, "PIXEL_BLOCK", 16)
    for c in (1, 3):
        x, p = make(5, c, 7, 9, 4, torch.float32)
        runs = []
        for threads, pool in itertools.product((1, 2, 3), (False, True)):
            monkeypatch.setattr(native, "_openmp", native._openmp and not pool)
            g = torch.empty_like(p)
            runs.append((T.native_rows(fn, x, p, g, 8, -0.5, threads=threads), g))
            monkeypatch.undo()
            monkeypatch.setattr(T, "PIXEL_BLOCK", 16)
        for rows, g in runs[1:]:
            assert torch.equal(rows, runs[0][0]) and torch.equal(g, runs[0][1])
        want = F.dmol_log_prob(x.double(), p.double())
        assert_close("log p", runs[0][0], want, torch.float32, scale=want.abs().max())
