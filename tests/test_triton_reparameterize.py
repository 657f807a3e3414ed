"""The in-kernel Philox sampler (fastvae/kernels/reparameterize.py).

Compiled on CUDA when present, else under TRITON_INTERPRET=1 (test_triton_interpreter.py).
eps is never stored: the tests recover it from z as (z - mu) / std.
"""
import pytest
import torch

pytest.importorskip("triton")
from _triton_testing import skip_module_unless_kernels_run  # noqa: E402

skip_module_unless_kernels_run()
from scipy import stats

import fastvae
from fastvae.backends import triton_backend as tb
from _triton_testing import DEVICE, assert_close, launches, leaf, needs_kernels, poison  # noqa: F401
import triton.language as tl  # noqa: E402

pytestmark = [needs_kernels, pytest.mark.usefixtures("poison")]


def eps_of(z, mu, lv):
    return ((z - mu) / torch.exp(0.5 * lv)).detach()


@pytest.mark.parametrize("b,l,k", [(1, 1, None), (3, 7, None), (257, 33, 3), (5, 1000, 2)])
def test_shapes_and_gradients(seed, launches, b, l, k):
    mu = leaf(torch.randn(b, l, device=DEVICE))
    lv = leaf(torch.randn(b, l, device=DEVICE))
    z = fastvae.reparameterize(mu, lv, n_samples=k, backend="triton")
    assert z.shape == ((b, l) if k is None else (k, b, l)) and z.dtype == mu.dtype
    assert torch.isfinite(z).all()
    assert launches == ["reparam_fwd_kernel"]
    dz = torch.randn_like(z)
    dmu, dlv = torch.autograd.grad(z, [mu, lv], dz)
    assert launches == ["reparam_fwd_kernel", "reparam_bwd_kernel"]
    eps = eps_of(z, mu, lv)
    dims = () if k is None else (0,)
    want_mu = dz.sum(dims) if dims else dz
    prod = dz * 0.5 * torch.exp(0.5 * lv.detach()) * eps
    want_lv = prod.sum(dims) if dims else prod
    assert_close(dmu, want_mu, torch.float32, "dmu")
    assert_close(dlv, want_lv, torch.float32, "dlogvar")


def test_no_noise_is_saved(seed):
    """saved_tensors_hooks: autograd keeps logvar (an input) and the one-element seed."""
    b, l, k = 64, 16, 8
    mu = leaf(torch.randn(b, l, device=DEVICE))
    lv = leaf(torch.randn(b, l, device=DEVICE))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        z = fastvae.reparameterize(mu, lv, n_samples=k, backend="triton")
    shapes = sorted(tuple(t.shape) for t in saved)
    assert shapes == [(1,), (b, l)], shapes
    assert sum(t.numel() * t.element_size() for t in saved) == b * l * 4 + 8
    assert not any(t.numel() >= k * b * l for t in saved)
    z.sum().backward()


def test_moments_and_ks(seed):
    mu = torch.full((64, 250), 1.5, device=DEVICE)
    lv = torch.full((64, 250), 2 * torch.log(torch.tensor(0.5)).item(), device=DEVICE)
    z = fastvae.reparameterize(mu, lv, n_samples=2, backend="triton")
    eps = eps_of(z, mu, lv).double().flatten()
    n = eps.numel()
    assert abs(float(eps.mean())) < 5 / n**0.5
    assert abs(float(eps.var()) - 1) < 6 * (2 / n) ** 0.5
    assert abs(float((eps**3).mean())) < 6 * (15 / n) ** 0.5
    assert abs(float((eps**4).mean()) - 3) < 6 * (96 / n) ** 0.5
    assert stats.kstest(eps.cpu().numpy(), "norm").pvalue > 1e-4
    # the samples of one call are independent of each other: k, rows and latents
    e = eps.reshape(2, 64, 250)
    corr = torch.corrcoef(torch.stack([e[0].flatten(), e[1].flatten()]))[0, 1]
    assert abs(float(corr)) < 5 / (64 * 250) ** 0.5
    lag = torch.corrcoef(torch.stack([e[0, :, :-1].flatten(), e[0, :, 1:].flatten()]))[0, 1]
    assert abs(float(lag)) < 5 / (64 * 249) ** 0.5


def test_reproducible_with_torch_seeding():
    mu = torch.randn(9, 2000, device=DEVICE)
    lv = torch.randn(9, 2000, device=DEVICE)
    torch.manual_seed(123)
    a = fastvae.reparameterize(mu, lv, n_samples=2, backend="triton")
    torch.manual_seed(123)
    b = fastvae.reparameterize(mu, lv, n_samples=2, backend="triton")
    c = fastvae.reparameterize(mu, lv, n_samples=2, backend="triton")
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1 = torch.Generator(device=DEVICE).manual_seed(7)
    g2 = torch.Generator(device=DEVICE).manual_seed(7)
    d = fastvae.reparameterize(mu, lv, generator=g1, backend="triton")
    e = fastvae.reparameterize(mu, lv, generator=g2, backend="triton")
    assert torch.equal(d, e)
    # the noise depends on (seed, position) only, not on the launch configuration
    seed = tb.draw_seed(DEVICE)
    ref = tb.reparameterize_op(mu, lv, seed, 2)
    mode = tb.CONFIG_MODE
    try:
        tb.CONFIG_MODE = "gpu" if mode != "gpu" else "interpret"
        other = tb.reparameterize_op(mu, lv, seed, 2)
    finally:
        tb.CONFIG_MODE = mode
    assert torch.equal(ref, other)
    # sample k of K is the same draw whatever K is
    assert torch.equal(tb.reparameterize_op(mu, lv, seed, 3)[:2], ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(seed, dtype):
    mu = leaf(torch.randn(33, 40, device=DEVICE, dtype=dtype))
    lv = leaf(torch.randn(33, 40, device=DEVICE, dtype=dtype))
    z = fastvae.reparameterize(mu, lv, n_samples=2, backend="triton")
    assert z.dtype == dtype
    eps = eps_of(z.float(), mu.float(), lv.float())
    assert eps.abs().max() < 7
    dz = torch.randn_like(z)
    dmu, dlv = torch.autograd.grad(z, [mu, lv], dz)
    assert dmu.dtype == dtype and dlv.dtype == dtype
    assert_close(dmu, dz.sum(0).float(), dtype, "dmu")
    assert torch.isfinite(dlv.float()).all()


def test_only_mu_requires_grad(seed, launches):
    mu = leaf(torch.randn(4, 5, device=DEVICE))
    lv = torch.randn(4, 5, device=DEVICE)
    z = fastvae.reparameterize(mu, lv, n_samples=3, backend="triton")
    (g,) = torch.autograd.grad(z.sum(), [mu])
    assert torch.equal(g, torch.full_like(mu, 3.0))
    assert len(launches) == 2


def test_large_counters_use_the_high_word():
    """Counters past 2**32 (K * B*L/4 > 2**32 in real use) feed Philox's second word: a
    draw far down the K axis is not a copy of an early one. Checked on the counter
    itself (such tensors do not fit a CPU test) through randn4x, as the kernels call it."""
    import triton

    # tl comes from the module's globals: Triton 3.0's interpreter looks for
    # triton.language there, not among a test function's locals.
    @triton.jit
    def draw(SEED, CTR, OUT):
        i = tl.arange(0, 4)
        ctr = tl.load(CTR + i)
        n0, n1, n2, n3 = tl.randn4x(tl.load(SEED), ctr)
        tl.store(OUT + i, n0)

    seed = torch.tensor([99], dtype=torch.int64, device=DEVICE)
    ctr = torch.tensor([5, 5 + 2**32, 5 + 2**33, 5], dtype=torch.int64, device=DEVICE)
    out = torch.empty(4, device=DEVICE)
    draw[(1,)](seed, ctr, out)
    assert out[0] == out[3]
    assert len({float(v) for v in out[:3]}) == 3


def test_double_backward_raises(seed):
    """Like every fused op: differentiable once; a second derivative raises, never silently
    drops d(dlogvar)/dlogvar."""
    mu = leaf(torch.randn(3, 4, device=DEVICE))
    lv = leaf(torch.randn(3, 4, device=DEVICE))
    z = fastvae.reparameterize(mu, lv, n_samples=2, backend="triton")
    (g,) = torch.autograd.grad(z.sum(), [lv], create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        g.sum().backward()
